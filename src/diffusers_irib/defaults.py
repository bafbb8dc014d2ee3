"""Defaults shared by the pipeline, the command lines and the web page, in a module without imports
(``--help`` must not load torch), so that every entry point restores the same way.
"""

#: Look Forward Once refinements (paper eqs. 20-22) when none are asked for. The paper's LFO
#: ablation is in Table 1: its last row per dataset, "OSDiff + Ours, ELQ -> LQ -> HQ, LFO x2", has the
#: best DISTS, FID, MUSIQ and CLIPQA of the three LFO rows on both DIV2K (FID 62.9475, MUSIQ 70.6806)
#: and DIV8K (FID 40.5523, MUSIQ 70.0020), while PSNR/SSIM move by less than 0.05 dB / 0.001.
#: Each step costs one more projector pass, unless its prompts repeat the last round's (then it reuses
#: that round's LQ proxy: a fixed prompt or no extractor costs one pass in all).
DEFAULT_LFO_STEPS = 2
