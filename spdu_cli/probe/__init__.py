"""Health checks of the peer sites, all at once, each under a hard deadline.

What the original did with `curl --resolve`: GET the status URL with the public
name in the Host header and TLS SNI, connected to one target address. Or, for a
service that is not HTTP (probeType=tcp): connect, optionally TLS, optionally
read a banner. Every try has one deadline covering connect, TLS and every
byte read, so a server that hangs or trickles cannot stretch it. One thread
and non-blocking sockets probe every address of every target concurrently.

Its rooms, from the bottom up (each imports only rooms listed before it):
- spec: what one target's probe asks (ProbeSpec) and what it found; the caps.
- names: the lookup of targets' names, for targets without targetIP.
- attempt: one connection attempt under one deadline, whatever it speaks.
- http: the HTTP(S) GET of the status URL, judged as it arrives.
- tcp: the TCP probe (probeType=tcp): connect, TLS, a banner.
- engine: the event loop that runs every try at once; `probe()`.
- rounds: the confirming probes of the cron loop, overlapping one that hangs.
- kept: the connections of good probes, kept open and watched between probes.
- step: the `spdu probe` step, which writes each result to the spool.

Nothing is imported here: import each name from its room.
"""
