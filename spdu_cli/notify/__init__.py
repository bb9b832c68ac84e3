"""`spdu notify`: mail each state change recorded in the spool once, post it to
each webhook once, and log it to syslog.

Pending transitions -> a Plan of mails and webhook POSTs (single notices, digests,
flap summaries; pure functions) -> SMTP / HTTP -> marked per channel in the
spool. Delivery is at least once: a transition is marked for a channel only
after that channel accepted it, and notified once every channel has (see run).

Its rooms: `outbox` (which transitions go out together: notices, digests,
flap summaries), `text` (subject and body), `mail` (compose, SMTP),
`webhook` (the POSTs), `marks` (what is recorded in the spool), `step`
(`spdu notify` itself: run). The journal view and the syslog line live in
spdu_cli.journal, which probe and maint use too.
"""
