// The dashboard's only script: live updates over Server-Sent Events. Transcript text is only
// ever assigned with textContent, never parsed as HTML.
"use strict";
(() => {
  const body = document.body;
  const status = document.getElementById("live-status");

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const dateFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });
  function localTime(el) {
    const at = new Date(el.getAttribute("datetime"));
    if (isNaN(at)) return;
    const today = new Date().toDateString() === at.toDateString();
    el.textContent = (today ? timeFormat : dateFormat).format(at);
    el.title = at.toISOString();
  }
  function timeElement(iso) {
    const el = document.createElement("time");
    el.setAttribute("datetime", iso);
    el.textContent = iso;
    localTime(el);
    return el;
  }
  document.querySelectorAll("time[datetime]").forEach(localTime);

  function setStatus(text, cls) {
    if (!status) return;
    status.textContent = text;
    status.className = "status " + cls;
  }

  // One EventSource; the browser resumes it with Last-Event-ID after a dropped connection.
  // After a refused one (e.g. the dashboard restarting) it is reopened from the last id.
  function follow(url, after, onEntry) {
    let lastId = after;
    let source = null;
    function open() {
      const target = new URL(url, location.href);
      if (lastId) target.searchParams.set("after", lastId);
      source = new EventSource(target);
      source.onopen = () => setStatus("live", "live");
      source.addEventListener("entry", (ev) => {
        lastId = ev.lastEventId || lastId;
        onEntry(JSON.parse(ev.data));
      });
      source.addEventListener("resync", () => {
        source.close();
        setStatus("reloading", "stale");
        location.reload();
      });
      source.onerror = () => {
        setStatus("reconnecting…", "stale");
        if (source.readyState === EventSource.CLOSED) setTimeout(open, 2000);
      };
    }
    open();
  }

  function mmss(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const two = (n) => String(n).padStart(2, "0");
    return h ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
  }

  // ---- "/": calls in progress and ended calls --------------------------------------------
  function indexPage() {
    const active = document.querySelector("#active tbody");
    const ended = document.querySelector("#ended tbody");
    const callUrl = body.dataset.callUrl;
    const cell = (row, name) => row.querySelector("td." + name);

    function refreshCounts() {
      document.getElementById("active-count").textContent = active.rows.length;
      document.getElementById("active-empty").hidden = active.rows.length > 0;
      document.getElementById("ended-empty").hidden = ended.rows.length > 0;
    }

    function newRow(e) {
      const row = document.createElement("tr");
      row.dataset.call = e.call_sid;
      row.dataset.transcriptions = "";
      row.dataset.labels = "";
      for (const name of ["sid", "labels", "started", "duration", "count", "latest", "errors"]) {
        const td = document.createElement("td");
        td.className = name;
        row.appendChild(td);
      }
      const link = document.createElement("a");
      link.href = callUrl.replace("CALLSID", e.call_sid);
      link.title = e.call_sid;
      link.textContent = e.call_sid.slice(0, 6) + "…" + e.call_sid.slice(-6);
      cell(row, "sid").appendChild(link);
      const started = e.received_at || new Date().toISOString();
      cell(row, "started").appendChild(timeElement(started));
      cell(row, "duration").dataset.start = String(Date.parse(started));
      cell(row, "duration").textContent = "0:00";
      cell(row, "count").textContent = "0";
      active.insertBefore(row, active.firstChild);
      return row;
    }

    function addLabel(row, label) {
      const labels = row.dataset.labels ? row.dataset.labels.split(" / ") : [];
      if (label && !labels.includes(label)) labels.push(label);
      row.dataset.labels = labels.join(" / ");
      cell(row, "labels").textContent = row.dataset.labels;
    }

    function end(row, e) {
      const duration = cell(row, "duration");
      if (duration.dataset.start && e.received_at) {
        duration.textContent = mmss((Date.parse(e.received_at) - Number(duration.dataset.start)) / 1000);
      }
      delete duration.dataset.start;
      ended.insertBefore(row, ended.firstChild);
    }

    function onEntry(e) {
      let row = document.querySelector(`tr[data-call="${CSS.escape(e.call_sid)}"]`);
      if (!row) {
        if (e.event === "stopped") return;
        row = newRow(e);
      } else if (e.event === "started" && row.parentNode === ended) {
        // A new transcription: the call came back. Anything else after its end is a late
        // delivery (Twilio does not guarantee order) and leaves it among the ended calls.
        active.insertBefore(row, active.firstChild);
        cell(row, "duration").dataset.start = String(Date.parse(row.querySelector("time").getAttribute("datetime")));
      }
      const inProgress = row.parentNode === active;
      const transcriptions = new Set(row.dataset.transcriptions.split(" ").filter(Boolean));
      if (e.event === "started") {
        transcriptions.add(e.transcription_sid);
        addLabel(row, e.inbound_track_label);
        addLabel(row, e.outbound_track_label);
      } else if (e.event === "content" && e.final === "true") {
        if (inProgress) transcriptions.add(e.transcription_sid); // its started may come later
        const count = cell(row, "count");
        count.textContent = String(Number(count.textContent || "0") + 1);
        cell(row, "latest").textContent = `${e.track_label || e.track || ""}: ${e.transcript || ""}`;
        addLabel(row, e.track_label);
      } else if (e.event === "error") {
        const errors = cell(row, "errors");
        errors.textContent = String(Number(errors.textContent || "0") + 1);
        errors.classList.add("has-errors");
        errors.title = `${e.error_code || ""} ${e.error_message || ""}`.trim();
      } else if (e.event === "stopped") {
        transcriptions.delete(e.transcription_sid);
      }
      row.dataset.transcriptions = [...transcriptions].join(" ");
      if (e.event === "stopped" && transcriptions.size === 0 && row.parentNode === active) end(row, e);
      refreshCounts();
    }

    setInterval(() => {
      for (const td of active.querySelectorAll("td.duration[data-start]")) {
        td.textContent = mmss((Date.now() - Number(td.dataset.start)) / 1000);
      }
    }, 1000);
    follow(body.dataset.events, body.dataset.after, onEntry);
  }

  // ---- "/calls/<CallSid>": one conversation -----------------------------------------------
  function callPage() {
    const chat = document.getElementById("chat");
    const low = Number(body.dataset.low || "0");
    const labels = { inbound: body.dataset.inbound, outbound: body.dataset.outbound };
    const seen = new Set([...chat.children].map((li) => li.dataset.entry));
    const partials = new Map(); // transcription and track -> its partial bubble
    const lastFinal = new Map(); // transcription and track -> SequenceId of its latest final
    const transcriptions = new Set(body.dataset.transcriptions.split(" ").filter(Boolean));
    let live = body.dataset.active === "1";
    const state = document.getElementById("call-state");

    function setLive(value) {
      live = value;
      state.textContent = value ? "in progress" : "ended";
      state.className = "state " + (value ? "live" : "ended");
    }

    function atBottom() {
      const page = document.scrollingElement;
      return page.scrollTop + page.clientHeight >= page.scrollHeight - 80;
    }

    // The order of the downloads and of the page as served (receiver/dashboard/transcript.py,
    // docs/dashboard.md): a final with a time (data-at: spoken time or Timestamp) at that time;
    // any other line when it was stored (data-entry), or just before the first later SequenceId
    // of its transcription stored before it (finals only, for a final). Ties: SequenceId, then
    // as stored. Partial results stay below.
    const NEVER = [Infinity, 0];
    const entryPlace = (id) => (id || "0-0").split("-").map(Number).concat([0]).slice(0, 2);
    const before = (a, b) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);
    const earliest = (a, b) => (before(b, a) ? b : a);
    const cmp = (x, y) => (x < y ? -1 : x > y ? 1 : 0);
    const comparePlaces = (a, b) => (before(a, b) ? -1 : before(b, a) ? 1 : 0);

    function reorder() {
      const lines = [...chat.children].filter((li) => !li.classList.contains("partial"));
      const groups = new Map();
      const info = lines.map((li) => {
        const timed = li.dataset.at !== undefined && li.dataset.at !== "";
        const x = {
          li,
          tsid: li.dataset.tsid || "",
          seq: Number(li.dataset.seq || "0"),
          entry: entryPlace(li.dataset.entry),
          final: li.classList.contains("final"),
          timed,
        };
        x.base = timed ? [Number(li.dataset.at), 0] : x.entry;
        if (!groups.has(x.tsid)) groups.set(x.tsid, []);
        groups.get(x.tsid).push(x);
        return x;
      });
      for (const group of groups.values()) {
        group.sort((a, b) => b.seq - a.seq);
        let laterFinal = NEVER, laterAny = NEVER;
        for (let n = 0; n < group.length;) {
          let end = n;
          while (end < group.length && group[end].seq === group[n].seq) end++;
          for (const x of group.slice(n, end)) {
            x.place = x.timed ? x.base : earliest(x.base, x.final ? laterFinal : laterAny);
          }
          for (const x of group.slice(n, end)) {
            laterAny = earliest(laterAny, x.base);
            if (x.final) laterFinal = earliest(laterFinal, x.base);
          }
          n = end;
        }
      }
      info.sort((a, b) => comparePlaces(a.place, b.place) || a.seq - b.seq ||
        comparePlaces(a.entry, b.entry) || cmp(a.tsid, b.tsid));
      if (info.every((x, n) => x.li === lines[n])) return;
      const firstPartial = chat.querySelector("li.partial");
      for (const x of info) chat.insertBefore(x.li, firstPartial);
    }

    function place(li) {
      chat.insertBefore(li, chat.querySelector("li.partial"));
      reorder();
    }

    function bubble(e, cls) {
      const li = document.createElement("li");
      const track = e.track === "inbound" ? "in" : "out";
      li.className = `msg ${cls} ${track}`;
      li.dataset.tsid = e.transcription_sid || "";
      li.dataset.seq = e.sequence_id || "0";
      li.dataset.track = e.track || "";
      if (e.at_ms !== undefined && e.at_ms !== null) li.dataset.at = String(e.at_ms);
      const who = document.createElement("div");
      who.className = "who";
      who.textContent = e.track_label || labels[e.track] || e.track || "";
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = e.transcript || "";
      const when = document.createElement("div");
      when.className = "when";
      when.appendChild(timeElement(e.received_at || new Date().toISOString()));
      li.append(who, text, when);
      return li;
    }

    function onEntry(e) {
      const entry = e.call_entry_id;
      if (entry && seen.has(entry)) return; // already in the page's history
      if (entry) seen.add(entry);
      const follow = atBottom();
      const key = `${e.transcription_sid}/${e.track}`;
      const seq = Number(e.sequence_id || "0");
      if (e.event === "content" && e.final !== "true") {
        if (seq <= (lastFinal.get(key) || -1)) return; // older than its final
        let li = partials.get(key);
        if (!li) {
          li = bubble(e, "partial");
          partials.set(key, li);
          chat.appendChild(li);
        } else if (seq < Number(li.dataset.seq)) {
          return; // an older partial arriving late
        }
        li.dataset.seq = String(seq);
        li.querySelector(".text").textContent = e.transcript || "";
      } else if (e.event === "content") {
        lastFinal.set(key, Math.max(seq, lastFinal.get(key) || -1));
        const partial = partials.get(key);
        if (partial && Number(partial.dataset.seq) <= seq) {
          partial.remove();
          partials.delete(key);
        }
        const li = bubble(e, "final");
        li.dataset.entry = entry || "";
        const confidence = Number(e.confidence);
        if (e.confidence && confidence < low) {
          li.classList.add("low");
          const mark = document.createElement("span");
          mark.className = "low-mark";
          mark.title = `confidence ${e.confidence}`;
          mark.textContent = `low confidence ${e.confidence}`;
          li.querySelector(".when").append(" · ", mark);
        }
        place(li);
      } else {
        const li = document.createElement("li");
        li.className = `notice ${e.event}`;
        li.dataset.entry = entry || "";
        li.dataset.tsid = e.transcription_sid || "";
        li.dataset.seq = e.sequence_id || "0";
        const text = document.createElement("span");
        text.className = "text";
        if (e.event === "started") {
          const parts = [e.name, e.track_setting, e.language_code].filter(Boolean);
          text.textContent = "Transcription started" + (parts.length ? ` (${parts.join(", ")})` : "");
          if (e.inbound_track_label) labels.inbound = e.inbound_track_label;
          if (e.outbound_track_label) labels.outbound = e.outbound_track_label;
          transcriptions.add(e.transcription_sid);
          setLive(true);
        } else if (e.event === "stopped") {
          text.textContent = "Transcription stopped";
          transcriptions.delete(e.transcription_sid);
          if (transcriptions.size === 0) setLive(false);
        } else if (e.event === "error") {
          text.textContent = `Transcription error ${e.error_code || ""}: ${e.error_message || ""}`;
        } else {
          text.textContent = `Event ${e.event}`;
        }
        li.append(text, " ", timeElement(e.received_at || new Date().toISOString()));
        place(li);
      }
      document.getElementById("chat-empty").hidden = true;
      if (follow && live) window.scrollTo(0, document.scrollingElement.scrollHeight);
    }

    if (live) window.scrollTo(0, document.scrollingElement.scrollHeight);
    follow(body.dataset.events, body.dataset.after, onEntry);
  }

  if (body.dataset.page === "index") indexPage();
  if (body.dataset.page === "call") callPage();
})();
