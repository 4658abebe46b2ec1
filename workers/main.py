"""`stockgate worker`: run one worker process until SIGINT/SIGTERM."""

from __future__ import annotations

import logging

from stockgate.embedded import EmbeddedRedis, running_url, start_for
from stockgate.settings import Settings
from workers.runtime import WorkerConfig
from workers.settings import build_worker


def resolve_redis_url(settings: Settings) -> tuple[str, EmbeddedRedis | None]:
    """The configured Redis, else the embedded server of the data directory (started by
    `stockgate up` or `serve`), else one started here."""
    if settings.redis_url:
        return settings.redis_url, None
    url = running_url(settings.data_dir)
    if url:
        return url, None
    server = start_for(settings.data_dir, settings.durability)
    return server.url, server


def run_worker(settings: Settings, config: WorkerConfig | None = None) -> None:
    """Blocking: consume the outbox, push to channels, expire holds, reconcile."""
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    url, server = resolve_redis_url(settings)
    try:
        worker = build_worker(settings, url, config)
        worker.run()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    from stockgate.settings import load_settings

    run_worker(load_settings())
