"""How long one redraw of chapter 3's RoI explorer takes: the budget is 100 ms on 2 CPU cores.

    python benchmarks/roi_widget.py [--threads 2] [--repeats 7] [--quick]

A redraw is what moving one control does: ``roi_explorer_state`` (feature map, both
ops' bins and samples, both pooled outputs), moving the artists of the one reused
figure, and encoding it as PNG for the Image widget. Each row is the best of
``--repeats`` calls after a warm-up call, for the worked example and for boxes at
every stride and output size; the last row times the widget's own ``update()``.
"""

from __future__ import annotations

import argparse
import time

import skimage.data
import torch

from fpnbook.widgets.roi import EXAMPLE, RoIFigure, grey_image, roi_explorer, roi_explorer_state

BUDGET_MS = 100.0


def best_ms(fn, repeats: int, clock=time.perf_counter) -> float:
    """Best time of ``fn`` in ms after one warm-up call, by ``clock``: wall time, or
    ``time.process_time`` for CPU time (what a redraw costs when the cores are not shared)."""
    fn()  # warm-up: first calls pay for caches and allocations
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1000 * min(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="one case, two repeats (a smoke run)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    image = grey_image(skimage.data.astronaut())
    figure = RoIFigure()
    cases = [dict(EXAMPLE)]
    if not args.quick:
        cases += [dict(EXAMPLE, stride=s, output_size=o, sampling_ratio=0) for s in (4, 32) for o in (7, 14)]
    repeats = 2 if args.quick else args.repeats
    results = {}
    print(f"{'case':<44} {'state':>8} {'draw+png':>9} {'total':>8}")
    for case in cases:
        def state():
            return roi_explorer_state(image, **case)
        s = state()
        t_state = best_ms(state, repeats)
        t_draw = best_ms(lambda: (figure.draw(s), figure.png()), repeats)
        name = f"stride {case['stride']}, {case['output_size']}x{case['output_size']}, ratio {case['sampling_ratio']}"
        results[name] = t_state + t_draw
        print(f"{name:<44} {t_state:7.1f}ms {t_draw:8.1f}ms {t_state + t_draw:7.1f}ms")
    widget = roi_explorer(image)
    results["widget.update()"] = best_ms(widget.update, repeats)
    cpu = best_ms(widget.update, repeats, clock=time.process_time)
    print(f"{'widget.update() (worked example)':<44} {'':>8} {'':>9} {results['widget.update()']:7.1f}ms"
          f"  (CPU time {cpu:.1f} ms)")
    worst = max(results.values())
    print(f"slowest redraw {worst:.1f} ms wall with {args.threads} threads: "
          f"{'within' if worst <= BUDGET_MS else 'OVER'} the {BUDGET_MS:.0f} ms budget"
          " (on a busy machine wall time overstates it: compare the CPU time)")
    results["widget.update() cpu"] = cpu
    return results


if __name__ == "__main__":
    main()
