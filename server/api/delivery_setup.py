"""Start-up of the delivery side: the bus, the connection registry, the delivery services and
their hooks (the sockets themselves are :mod:`saltline.server.api.ws`)."""

from __future__ import annotations

from saltline.crypto.keys import b64decode
from saltline.server.api.connections import ConnectionRegistry
from saltline.server.api.ws import DeviceConnection
from saltline.server.context import AppContext
from saltline.server.services.delivery import DeliveryService
from saltline.server.services.delivery_frames import device_list_frame
from saltline.server.services.delivery_metrics import DeliveryMetrics
from saltline.server.services.delivery_protocol import CLOSE_SERVICE_RESTART
from saltline.server.storage.envelopes_repo import QueueItem


async def start_delivery(ctx: AppContext) -> None:
    """Build and start the delivery side on ``ctx``: bus, connection registry, conversations and
    delivery services, the device-removed and tokens-revoked hooks, and their shutdown."""
    from saltline.server.services.bus import DeliveryBus, InProcessBus
    from saltline.server.services.conversations import ConversationsService
    from saltline.server.storage.conversations_repo import ConversationsRepo
    from saltline.server.storage.envelopes_repo import EnvelopesRepo

    settings = ctx.settings
    metrics = DeliveryMetrics(ctx.registry)
    bus: DeliveryBus
    if settings.redis_url:
        from saltline.server.services.redis_bus import RedisBus

        bus = RedisBus(settings.redis_url)
    else:
        bus = InProcessBus()
    await bus.start()
    registry = ConnectionRegistry()
    conversations_repo = ConversationsRepo(ctx.db)
    delivery = DeliveryService(
        envelopes=EnvelopesRepo(ctx.db),
        conversations=conversations_repo,
        bus=bus,
        metrics=metrics,
        clock=ctx.clock,
        max_envelope_bytes=settings.max_envelope_bytes,
        max_recipients=settings.max_recipients,
        queue_retention_s=settings.queue_retention_s,
        history_page_max_bytes=settings.history_page_max_bytes,
        limiter=ctx.rate_limiter,
        sends_per_device=settings.rate_limit_envelopes_per_device,
        send_bytes_per_device=settings.rate_limit_envelope_bytes_per_device,
    )
    ctx.bus = bus
    ctx.connections = registry
    ctx.delivery = delivery

    def local_push(device_id: bytes, item: QueueItem) -> bool:
        conn = registry.get(device_id)
        return isinstance(conn, DeviceConnection) and conn.offer(item)

    delivery.local_push = local_push
    ctx.conversations = ConversationsService(
        conversations_repo, ctx.clock, max_members=settings.max_recipients
    )
    await delivery.start()

    async def on_device_removed(_account_id: str, device_id: str) -> None:
        await delivery.device_removed(b64decode(device_id))

    ctx.on_device_removed.append(on_device_removed)

    async def on_device_list_changed(account_id: str, version: int) -> None:
        # every remaining device of the account is told at once (a device added by a thief is
        # then visible on the owner's other devices); offline ones check when they connect
        frame = device_list_frame(account_id, version)
        devices = await ctx.devices.active_devices(b64decode(account_id))
        await bus.publish_ephemeral({b64decode(d.device_id): frame for d in devices})

    ctx.on_device_list_changed.append(on_device_list_changed)

    async def on_tokens_revoked(_account_id: str, device_id: str) -> None:
        # Refresh-token reuse revoked the device's token family: whoever holds the socket may be
        # the thief, so close it (4003); the rightful device logs in again.
        await bus.publish_tokens_revoked(b64decode(device_id))

    ctx.on_tokens_revoked.append(on_tokens_revoked)

    async def stop() -> None:
        await registry.close_all(CLOSE_SERVICE_RESTART, "server restarting")
        await delivery.close()
        await bus.close()

    ctx.on_shutdown.append(stop)
