"""What the countdown image costs: a fresh drawing, a neighbour second, and a cache hit.

    python bench/bench_countdown.py [--images 100] [--opens 10000]

- cold: `--images` deadlines far apart (no frame in common), each drawn from nothing;
- neighbour: the next second of an image just drawn (59 of its 60 frames cached);
- blast: `--opens` fetches of one shared deadline spread evenly over ten minutes of
  time left (a newsletter's offer opened by many readers), through the per-second cache.

Prints milliseconds per image and images per second for each, and the GIF's size.
Nothing here is a test; CI does not run it.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

from autofunnel.mail import countdown


def _clear() -> None:
    for cached in (countdown._countdown_gif, countdown._frame):
        cached.cache_clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--opens", type=int, default=10_000)
    args = parser.parse_args()

    _clear()
    countdown.draw_countdown(timedelta(days=3))  # fonts and glyphs loaded once per process
    _clear()
    cold = neighbour = 0.0
    sizes = []
    for index in range(args.images):
        left = timedelta(days=1, hours=index % 24, minutes=index)
        start = time.perf_counter()
        sizes.append(len(countdown.draw_countdown(left)))
        middle = time.perf_counter()
        countdown.draw_countdown(left - timedelta(seconds=1))
        cold, neighbour = cold + middle - start, neighbour + time.perf_counter() - middle
    cold, neighbour = cold / args.images, neighbour / args.images

    _clear()
    span = 600
    start = time.perf_counter()
    for index in range(args.opens):
        countdown.draw_countdown(timedelta(hours=30, seconds=span - index * span // args.opens))
    blast = (time.perf_counter() - start) / args.opens

    print(f"GIF: {countdown.WIDTH}x{countdown.HEIGHT} px, {countdown.FRAMES} frames, {sum(sizes) / len(sizes) / 1024:.1f} KiB on average")
    for name, seconds in (("cold (nothing cached)", cold), ("neighbour second (59 frames cached)", neighbour),
                          (f"blast: {args.opens} opens over {span} s of time left", blast)):
        print(f"{name:45s} {seconds * 1000:8.2f} ms/image {1 / seconds:10.0f} images/s")


if __name__ == "__main__":
    main()
