"""The read-only digital-twin dashboard ``ftl-cloud serve --http HOST:PORT`` serves.

It reads the state dir through a read-only SQLite connection per request
(``StateStore.open_read_only``), renders server-side HTML with inline SVG plots
(no script, no external resource), and has no endpoint that changes anything.
"""
