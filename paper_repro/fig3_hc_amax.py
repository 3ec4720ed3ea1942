"""Fig. 3: Amax gain of HC's H_res per layer - (a) single layer, (b) composite - forward (max
absolute row sum) and backward (max absolute column sum), averaged over tokens.

Paper (27B, 60 sites, arXiv 2512.24880 Fig. 3): the composite gain of HC peaks near 3000. Here: the
HC run of the stability study (small scale by default; shared with Figs. 2/5/7/8).

    python paper_repro/fig3_hc_amax.py                     # small scale
    python paper_repro/fig3_hc_amax.py --smoke             # seconds (wiring check)
    python paper_repro/fig3_hc_amax.py --scale paper mesh=fsdp=64,expert=8
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from paper_repro import common  # noqa: E402


def main(argv=None) -> int:
    args = common.stability_parser(__doc__).parse_args(argv)
    results, runs = common.stability_results(args, ["hc"])
    rows = results["hc"]
    shown = common.amax_figure(rows, "hc", "HC H_res", os.path.join(args.out, "fig3_hc_amax.png"))
    ext = common.amax_extremes(rows)
    peak = shown["peak"]
    n_sites = len(peak["composite_fwd"])
    comp_max = max(ext["composite_fwd"], ext["composite_bwd"])
    grows = peak["composite_fwd"][-1] > peak["composite_fwd"][0]
    table = [
        common.Row("largest composite Amax gain (fwd / bwd), any step and depth",
                   "peaks near 3000 (27B, 60 sites)",
                   f"{ext['composite_fwd']:.3g} / {ext['composite_bwd']:.3g} ({n_sites} sites)",
                   "partly: leaves 1 and grows, but far below 3000" if comp_max > 2
                   else common.verdict(False)),
        common.Row("largest single-site Amax gain (fwd / bwd)",
                   "single layers deviate from 1 (plot); the product compounds them",
                   f"{ext['amax_fwd']:.3g} / {ext['amax_bwd']:.3g}",
                   common.verdict(max(ext["amax_fwd"], ext["amax_bwd"]) > 1.01)),
        common.Row(f"composite gain grows with depth (step {peak['step']})",
                   "yes: compounding over depth",
                   f"site 1: {peak['composite_fwd'][0]:.3g}, site {n_sites}: "
                   f"{peak['composite_fwd'][-1]:.3g}", common.verdict(grows)),
    ]
    notes = (f"Runs: `{os.path.relpath(runs, common.REPO)}`. Gains are averaged over the tokens "
             "of the logged batch. The magnitude depends on depth, width and training length; "
             "the paper's 3000 is a 27B measurement.")
    text = common.write("fig3_hc_amax", "Fig. 3: HC Amax gain per layer", table, args.out,
                        common.command_line("fig3_hc_amax.py", argv), notes)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
