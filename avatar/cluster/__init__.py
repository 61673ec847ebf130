"""More than one server process: the session registry, operator events, takeover locks and
operator tokens shared through Redis (``redis_url``); without it, one process on its own."""
