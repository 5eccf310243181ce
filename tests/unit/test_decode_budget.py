"""The decode memory budget: never exceeded by concurrent decoders, oversized images refused."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from safegen.errors import TooLarge
from safegen.imaging import DecodeBudget, decode_bytes
from tests.support import images


def test_concurrent_reservations_never_exceed_the_budget() -> None:
    budget = DecodeBudget(100)
    peak = 0
    lock = threading.Lock()

    def decode(size: int) -> None:
        nonlocal peak
        with budget.reserve(size), lock:
            peak = max(peak, budget.used)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(decode, [10 + (i * 7) % 60 for i in range(400)]))
    assert 0 < peak <= 100
    assert budget.used == 0


def test_a_decode_waits_for_room_then_proceeds() -> None:
    budget = DecodeBudget(100)
    done = threading.Event()

    def second() -> None:
        with budget.reserve(50):
            done.set()

    with budget.reserve(80):
        thread = threading.Thread(target=second)
        thread.start()
        assert not done.wait(0.2)  # 80 + 50 would pass 100: it waits
    assert done.wait(10)  # room was released: it runs
    thread.join()


def test_an_image_larger_than_the_whole_budget_is_refused() -> None:
    budget = DecodeBudget(2**20)
    with pytest.raises(TooLarge, match="SAFEGEN_DECODE_MEMORY_MB"), budget.reserve(2**21):
        pass


def test_the_estimate_comes_from_the_header() -> None:
    bomb = Image.open(io.BytesIO(images.one_bit_png(8000, 5000)))
    # 1 byte a pixel for mode "1", 3 for the RGB copy, 1 of working buffers.
    assert decode_bytes(bomb) == 8000 * 5000 * 5


@pytest.mark.parametrize(
    ("mode", "pixel_bytes"),
    # PIL's bytes per pixel of each mode (RGBA, CMYK, I and F: 4), not the module's table.
    [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4), ("CMYK", 4), ("I", 4), ("F", 4)],
)
def test_the_estimate_is_the_modes_pixel_bytes_plus_four(mode: str, pixel_bytes: int) -> None:
    """README: an image is estimated from its header, its mode's bytes per pixel plus 4."""
    assert decode_bytes(Image.new(mode, (30, 20))) == 30 * 20 * (pixel_bytes + 4)
