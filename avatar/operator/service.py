"""Everything the operator side needs, built once per server: the store, accounts, sign-in
tokens, the login limiter, the event hub and the takeover desk."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from avatar.config import Settings
from avatar.operator.accounts import OperatorAccounts
from avatar.operator.hub import OperatorHub
from avatar.operator.takeover import TakeoverDesk
from avatar.operator.tokens import LoginLimiter, SqliteTokenBook, TokenBook
from avatar.store import Store


@dataclass
class OperatorService:
    store: Store
    accounts: OperatorAccounts
    tokens: TokenBook
    limiter: LoginLimiter
    hub: OperatorHub
    desk: TakeoverDesk

    @classmethod
    def build(cls, settings: Settings, store: Store | None = None) -> OperatorService:
        store = store or Store.in_data_dir(settings.data_dir)
        hub = OperatorHub()
        desk = TakeoverDesk(
            hub,
            store,
            cut=settings.takeover_cut,
            grace=settings.operator_grace,
            holding_line=settings.holding_line,
            sleep=asyncio.sleep,
        )
        return cls(
            store=store,
            accounts=OperatorAccounts(store),
            tokens=SqliteTokenBook.in_data_dir(settings.data_dir, settings.operator_token_ttl),
            limiter=LoginLimiter(),
            hub=hub,
            desk=desk,
        )

    def close(self) -> None:
        self.tokens.close()
        self.store.close()
