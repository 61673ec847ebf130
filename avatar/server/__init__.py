"""The HTTP/WebRTC server."""
