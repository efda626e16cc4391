"""Developer tools around the receiver: the Twilio emulator and its conversations, tail, demo,
memory and the bench. Nothing here runs in a deployed receiver."""
