"""Defaults shared by the pipeline, the command lines and the web page, in a module without imports
(``--help`` must not load torch), so that every entry point restores the same way.
"""

#: Look Forward Once refinements (paper eqs. 20-22) when none are asked for. The paper's LFO
#: ablation is Table 1: its last row per dataset, "OSDiff + Ours, ELQ -> LQ -> HQ, LFO x2", is best
#: (or tied) on DISTS, FID, MUSIQ and CLIPQA on DIV2K (62.9475 FID, 70.6806 MUSIQ) and on DISTS,
#: FID, MUSIQ on DIV8K; PSNR/SSIM move by less than 0.05 dB / 0.001. Each step costs one more
#: projector pass (README, "Speed").
DEFAULT_LFO_STEPS = 2
