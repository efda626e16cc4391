"""Store's per-thread Redis connection: one per thread, reused, never shared across a fork."""

from __future__ import annotations

import os
import threading

import redis

from receiver.storage.store import Keys, Store


def make_store(client: redis.Redis) -> Store:
    return Store(client, Keys("conn-test"), 60, 100, 100)


def test_each_thread_keeps_its_own_connection(redis_client: redis.Redis):
    store = make_store(redis.Redis(connection_pool=redis_client.connection_pool))
    mine = store._connection()
    assert store._connection() is mine
    assert mine.ping()
    seen: list[redis.Redis] = []
    thread = threading.Thread(target=lambda: seen.append(store._connection()))
    thread.start()
    thread.join()
    assert seen[0] is not mine
    assert seen[0].connection_pool is mine.connection_pool is redis_client.connection_pool


def test_a_forked_child_opens_its_own_connection(redis_client: redis.Redis):
    store = make_store(redis.Redis(connection_pool=redis_client.connection_pool))
    parent = store._connection()
    assert parent.ping()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        child = store._connection()
        os._exit(0 if child is not parent and child.ping() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._connection() is parent and parent.ping()


def test_other_clients_are_used_as_they_are(redis_client: redis.Redis):
    class Instrumented(redis.Redis):
        pass

    client = Instrumented(connection_pool=redis_client.connection_pool)
    assert make_store(client)._connection() is client
