"""The read-only web console at /console: message trace, queue and suppression list, with hourly
charts of sent, bounced and complained. Served by the relay itself on the admin side of the HTTP
listener; plain HTML and inline SVG, no JavaScript and no external resource (it works offline)."""
