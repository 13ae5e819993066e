"""The wire layer, sans-I/O: captured frames and plaintext streams in, protocol events out
(bytes and timestamps in, events out; nothing here reads a socket or a file).

records ← wire ← capture. ``frames`` (L2-L4: a frame → its TCP segment), ``tcp`` (reassembly:
segments → ordered byte streams with gaps), ``protocol`` (what a protocol parser gives the
Extractor and how one is picked per connection), ``http1/`` (HTTP/1.x), ``http2/`` and ``grpc``
(HTTP/2, gRPC), ``sse`` and ``genai`` (server-sent events, streamed LLM answers), ``content`` (the
one Content-Encoding decoder), ``anomalies`` (the names of the conditions records carry).
``shadowtap.capture.extractor`` composes them.
"""
