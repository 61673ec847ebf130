"""Live broadcast: stages without a customer, viewers at scale, the transparent overlay (see
``avatar.broadcast.stages``)."""
