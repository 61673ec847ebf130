"""The operator side: accounts, sign-in tokens, the takeover desk and the live event hub."""
