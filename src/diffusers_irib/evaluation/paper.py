"""The IRIB paper's published numbers (Tables 1-3), typed in as data with the table and row they come from.

Every row is the paper's text, not a computation: ``source`` names the table and the dataset block,
``method``/``training``/``lfo`` the row. The test sets are the DIV2K (800) and DIV8K (1,500) *train*
images, resized and centre-cropped to 512 x 512, degraded with the ELQ setting; PSNR and SSIM are on
the Y channel (OSEDiff's evaluation code, ``convention="y"``). The paper's Tables 1 and 2 and its text
spell OSEDiff "OSDiff", its Table 3 "OSEDiff": we write OSEDiff everywhere, in these rows too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["PAPER_METRICS", "PAPER_ROWS", "PAPER_TEST_SETS", "PaperRow", "paper_caveat", "paper_rows"]

#: The paper's test sets: (image count, crop size); the images are the train sets' 0001.png, 0002.png ...
PAPER_TEST_SETS = {"div2k": (800, 512), "div8k": (1500, 512)}
#: The eight metrics of the paper's tables, in its column order.
PAPER_METRICS = ("psnr", "ssim", "lpips", "dists", "fid", "niqe", "musiq", "clipiqa")


@dataclass(frozen=True)
class PaperRow:
    source: str  # e.g. "Table 1, DIV2K"
    dataset: str  # "div2k" or "div8k"
    method: str
    training: str
    lfo: Optional[int]  # None: no LFO column value (x); k: LFO x k
    values: tuple[float, ...]  # in PAPER_METRICS order
    method_key: str  # our evaluator's method name for this row, "" when we have no equivalent

    def as_dict(self) -> dict[str, float]:
        return dict(zip(PAPER_METRICS, self.values))


def _rows(source: str, dataset: str, rows: list[tuple]) -> list[PaperRow]:
    return [PaperRow(source, dataset, m, t, lfo, tuple(v), key) for m, t, lfo, key, v in rows]


PAPER_ROWS: tuple[PaperRow, ...] = tuple(
    _rows("Table 1, DIV2K", "div2k", [
        ("Real-ESRGAN", "Pretrained", None, "realesrgan", (19.5666, 0.4360, 0.7020, 0.3875, 159.1040, 8.6893, 31.7782, 0.3595)),
        ("OSEDiff", "Pretrained", None, "restorer", (19.6772, 0.4397, 0.4848, 0.3029, 81.5558, 4.3314, 63.8965, 0.6202)),
        ("OSEDiff", "ELQ -> HQ", None, "direct", (20.0958, 0.4818, 0.4275, 0.2710, 68.0802, 4.1018, 69.9307, 0.6615)),
        ("OSEDiff + Ours", "ELQ -> LQ -> HQ", None, "irib", (20.0488, 0.4797, 0.4249, 0.2621, 62.9768, 4.1814, 70.3529, 0.6829)),
        ("OSEDiff + Ours", "ELQ -> LQ -> HQ", 1, "irib-lfo1", (20.0084, 0.4790, 0.4261, 0.2599, 63.1425, 4.1830, 70.6405, 0.6844)),
        ("OSEDiff + Ours", "ELQ -> LQ -> HQ", 2, "irib-lfo2", (20.0047, 0.4790, 0.4255, 0.2594, 62.9475, 4.1875, 70.6806, 0.6848)),
    ])
    + _rows("Table 1, DIV8K", "div8k", [
        ("Real-ESRGAN", "Pretrained", None, "realesrgan", (20.2318, 0.4508, 0.7096, 0.3800, 144.1936, 8.6526, 32.3691, 0.3721)),
        ("OSEDiff", "Pretrained", None, "restorer", (20.5186, 0.4651, 0.4710, 0.2944, 58.1913, 4.5441, 63.9930, 0.6309)),
        ("OSEDiff", "ELQ -> HQ", None, "direct", (20.9333, 0.5065, 0.4082, 0.2627, 43.5674, 4.2649, 69.3240, 0.6560)),
        ("OSEDiff + Ours", "ELQ -> LQ -> HQ", None, "irib", (20.8791, 0.5040, 0.4051, 0.2535, 40.7901, 4.3803, 69.7483, 0.6803)),
        ("OSEDiff + Ours", "ELQ -> LQ -> HQ", 1, "irib-lfo1", (20.8489, 0.5038, 0.4057, 0.2516, 40.5819, 4.3829, 69.8903, 0.6801)),
        ("OSEDiff + Ours", "ELQ -> LQ -> HQ", 2, "irib-lfo2", (20.8421, 0.5039, 0.4053, 0.2505, 40.5523, 4.3719, 70.0020, 0.6806)),
    ])
    + _rows("Table 2, DIV2K", "div2k", [
        ("S3Diff", "Pretrained", None, "", (19.5941, 0.4379, 0.4583, 0.2830, 74.7576, 4.8987, 63.5064, 0.6411)),
        ("S3Diff + Ours", "ELQ -> LQ -> HQ", None, "", (19.8582, 0.4581, 0.4075, 0.2382, 58.3893, 4.3436, 70.8872, 0.6975)),
        ("SeeSR", "Pretrained", None, "", (19.1646, 0.4430, 0.4738, 0.2507, 69.3567, 4.4721, 71.1555, 0.7424)),
        ("SeeSR + Ours", "ELQ -> LQ -> HQ", None, "", (19.9312, 0.4632, 0.4506, 0.2374, 61.2615, 4.1355, 71.5719, 0.7320)),
    ])
    + _rows("Table 2, DIV8K", "div8k", [
        ("S3Diff", "Pretrained", None, "", (20.4950, 0.4630, 0.4490, 0.2754, 53.0353, 4.9418, 62.9439, 0.6386)),
        ("S3Diff + Ours", "ELQ -> LQ -> HQ", None, "", (20.7011, 0.4813, 0.3880, 0.2334, 36.7050, 4.5596, 70.5182, 0.6935)),
        ("SeeSR", "Pretrained", None, "", (20.0719, 0.4693, 0.4622, 0.2476, 43.4365, 4.6056, 70.3421, 0.7395)),
        ("SeeSR + Ours", "ELQ -> LQ -> HQ", None, "", (20.8649, 0.4921, 0.4345, 0.2345, 39.6162, 4.3091, 70.7543, 0.7285)),
    ])
    + _rows("Table 3, DIV2K", "div2k", [
        ("OSEDiff Fine-tuned", "ELQ -> HQ", None, "", (20.0958, 0.4818, 0.4275, 0.2710, 68.0802, 4.1018, 69.9307, 0.6615)),
        ("OSEDiff + Ours (blur 0)", "ELQ -> LQ -> HQ", None, "", (19.5735, 0.4300, 0.4725, 0.3003, 62.4275, 3.3994, 71.1609, 0.7004)),
        ("OSEDiff + Ours (blur 0.5)", "ELQ -> LQ -> HQ", None, "", (20.0488, 0.4797, 0.4249, 0.2621, 62.9768, 4.1814, 70.3529, 0.6829)),
        ("OSEDiff + Ours (blur 1)", "ELQ -> LQ -> HQ", None, "", (20.1332, 0.4838, 0.4251, 0.2622, 63.4009, 4.3263, 69.5339, 0.6753)),
        ("OSEDiff + Ours (blur 2)", "ELQ -> LQ -> HQ", None, "", (20.2779, 0.4871, 0.4263, 0.2644, 63.3627, 4.4081, 68.9951, 0.6774)),
    ])
    + _rows("Table 3, DIV8K", "div8k", [
        ("OSEDiff Fine-tuned", "ELQ -> HQ", None, "", (20.9333, 0.5065, 0.4082, 0.2627, 43.5674, 4.2649, 69.3240, 0.6560)),
        ("OSEDiff + Ours (blur 0)", "ELQ -> LQ -> HQ", None, "", (20.7544, 0.5016, 0.4044, 0.2510, 40.2708, 4.2857, 70.1484, 0.6830)),
        ("OSEDiff + Ours (blur 0.5)", "ELQ -> LQ -> HQ", None, "", (20.8791, 0.5040, 0.4051, 0.2535, 40.7899, 4.3803, 69.7483, 0.6803)),
        ("OSEDiff + Ours (blur 1)", "ELQ -> LQ -> HQ", None, "", (20.9850, 0.5071, 0.4076, 0.2554, 41.2787, 4.4901, 69.1095, 0.6760)),
        ("OSEDiff + Ours (blur 2)", "ELQ -> LQ -> HQ", None, "", (21.1423, 0.5108, 0.4075, 0.2563, 41.4256, 4.5464, 68.5735, 0.6783)),
    ])
)  # fmt: skip


def paper_rows(dataset: str, table: Optional[str] = None) -> list[PaperRow]:
    """The rows of one dataset (``"div2k"``/``"div8k"``), optionally of one table (``"Table 1"``)."""
    if dataset not in ("div2k", "div8k"):
        raise ValueError(f"dataset must be 'div2k' or 'div8k', got {dataset!r}")
    return [r for r in PAPER_ROWS if r.dataset == dataset and (table is None or r.source.startswith(table + ","))]


def paper_caveat(dataset: str, names: list[str], size: tuple[int, int]) -> Optional[str]:
    """One line to print under a table that puts the paper's ``dataset`` numbers beside a run on the
    images ``names`` (file stems) of ``size`` (width, height); None when the run's test set is the
    paper's (its image names and count, 512 x 512)."""
    count, side = PAPER_TEST_SETS[dataset]
    expected = {f"{i:04d}" for i in range(1, count + 1)}
    differences = []
    if set(names) != expected:
        differences.append(f"{len(names)} image(s), not the {count} of the {dataset.upper()} train set")
    if tuple(size) != (side, side):
        differences.append(f"{size[0]} x {size[1]} px, not {side} x {side}")
    if not differences:
        return None
    return (
        f"Caveat: this test set is not the paper's {dataset.upper()} at {side} x {side} ({'; '.join(differences)}): "
        "the paper's numbers are a reference, not a like-for-like comparison."
    )
