"""The neutral layer every other package may import, and which imports none of them: the
wire vocabulary (close and error codes, the error hierarchy, the events and requests of
protocol v1) and the retry helper."""
