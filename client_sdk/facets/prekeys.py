"""Prekeys: upload, replenish, rotate and expire (rules: :mod:`saltline.client_sdk.core.prekeys`)."""

from __future__ import annotations

from dataclasses import replace

from saltline.client_sdk.context import DeviceContext
from saltline.client_sdk.core import api
from saltline.client_sdk.core import prekeys as rules


class Prekeys:
    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        #: Count the server's one-time prekeys on the next drain (start-up, every ``ready``).
        self.recheck = True
        #: The server's last count less the one-time prekeys received messages used since.
        self.left_on_server: int | None = None
        self._running = False

    async def upload_all(self) -> None:
        ctx = self.ctx
        state = ctx.state
        await ctx.call(
            api.upload_keys(
                state.signed_prekey_public().to_b64(),
                state.last_resort_prekey_public().to_b64(),
                [k.to_b64() for k in state.one_time_prekeys_public()],
            )
        )
        top = max(state.one_time_prekeys, default=0)
        ctx.store.prekeys.put_prekey_meta(
            replace(
                ctx.store.prekeys.get_prekey_meta(),
                uploaded_through_id=top,
                signed_prekey_rotated_at_ms=ctx.clock(),
            )
        )

    def used_one(self) -> None:
        """A received initial message consumed one of this device's one-time prekeys."""
        if self.left_on_server is not None:
            self.left_on_server -= 1

    async def replenish(self) -> int:
        ctx = self.ctx
        count = api.parse_key_count((await ctx.call(api.key_count())).body)
        self.left_on_server, self.recheck = count, False
        n = rules.to_upload(count)
        if n == 0:
            ctx.store.prekeys.put_prekey_meta(
                replace(ctx.store.prekeys.get_prekey_meta(), last_count_check_ms=ctx.clock())
            )
            return 0
        async with ctx.lock:
            meta = ctx.store.prekeys.get_prekey_meta()
            state = ctx.state.add_one_time_prekeys(n, ctx.rng)
            ctx.put_state(state)
            fresh = [k for i, k in state.one_time_prekeys.items() if i > meta.uploaded_through_id]
            await ctx.call(
                api.upload_keys(None, None, [k.signed_public(state.signing_key).to_b64() for k in fresh])
            )
            top = max(state.one_time_prekeys, default=meta.uploaded_through_id)
            ctx.store.prekeys.put_prekey_meta(
                replace(meta, uploaded_through_id=top, last_count_check_ms=ctx.clock())
            )
            self.left_on_server = count + len(fresh)
        return len(fresh)

    async def rotate_if_due(self) -> bool:
        ctx = self.ctx
        meta = ctx.store.prekeys.get_prekey_meta()
        if not rules.rotation_due(now_ms=ctx.clock(), rotated_at_ms=meta.signed_prekey_rotated_at_ms):
            return False
        async with ctx.lock:
            old_record, old_state = ctx.device, ctx.state
            old_meta = ctx.store.prekeys.get_prekey_meta()
            state = old_state.rotate_signed_prekey(ctx.rng).replace_last_resort_prekey(ctx.rng)
            with ctx.transaction():
                ctx.put_state(state)
                # the grace period of the replaced keys starts now (stored with them)
                ctx.store.prekeys.put_prekey_meta(replace(old_meta, signed_prekey_rotated_at_ms=ctx.clock()))
            try:
                await ctx.call(
                    api.upload_keys(
                        state.signed_prekey_public().to_b64(), state.last_resort_prekey_public().to_b64(), []
                    )
                )
            except BaseException:
                # never published: nobody can have used the new keys, so the old state stands
                with ctx.transaction():
                    ctx.put_device(old_record, old_state)
                    ctx.store.prekeys.put_prekey_meta(old_meta)
                raise
            # the former previous keys are gone: so are their seen base keys
            ctx.store.prekeys.drop_seen_base_keys(state.reusable_prekey_ids())
        return True

    def _previous_expired(self) -> bool:
        meta = self.ctx.store.prekeys.get_prekey_meta()
        return rules.previous_expired(
            now_ms=self.ctx.clock(),
            rotated_at_ms=meta.signed_prekey_rotated_at_ms,
            has_previous=self.ctx.state.has_previous_prekeys,
        )

    async def expire_if_due(self) -> bool:
        ctx = self.ctx
        if not self._previous_expired():
            return False
        async with ctx.lock:
            if not self._previous_expired():
                return False
            state = ctx.state.drop_previous_prekeys()
            with ctx.transaction():
                ctx.put_state(state)
                ctx.store.prekeys.drop_seen_base_keys(state.reusable_prekey_ids())
        return True

    async def maintain(self) -> None:
        await self.replenish()
        await self.expire_if_due()
        await self.rotate_if_due()

    def work_due(self) -> rules.PrekeyWork:
        meta = self.ctx.store.prekeys.get_prekey_meta()
        return rules.work_due(
            now_ms=self.ctx.clock(),
            last_count_ms=meta.last_count_check_ms,
            rotated_at_ms=meta.signed_prekey_rotated_at_ms,
            recheck=self.recheck,
            left_on_server=self.left_on_server,
            has_previous=self.ctx.state.has_previous_prekeys,
        )

    async def maintain_if_due(self) -> None:
        """:meth:`maintain`, throttled by :func:`saltline.client_sdk.core.prekeys.work_due`; one at a time."""
        if self._running:
            return
        self._running = True
        try:
            work = self.work_due()
            if work.count:
                await self.replenish()
            if work.expire:
                await self.expire_if_due()
            if work.rotate:
                await self.rotate_if_due()
        finally:
            self._running = False
