from stockgate.models import Line
from stockgate.stock import StockEngine


async def test_hold_reserves_stock(engine: StockEngine) -> None:
    await engine.adjust("default", "SKU-1", reason="receipt", idempotency_key="r1", delta=5)
    reply, replayed = await engine.hold("default", [Line("SKU-1", 2)], hold_id="h1")
    assert not replayed and reply.hold_id == "h1"
    view = await engine.stock("default", "SKU-1")
    assert view.locations["main"].reserved == 2
    assert view.available == 3
