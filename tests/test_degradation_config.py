"""DegradationConfig: the published preset numbers, JSON round trips, and refusal of bad values."""

import json

import pytest

from diffusers_irib.degradations import DegradationConfig


def test_lq_preset_is_realesrgan_x4plus():
    c = DegradationConfig.realesrgan()
    assert (c.preset_name, c.preset_version, c.scale) == ("lq", 1, 4)
    assert c.kernel_size_range == (7, 21) and c.sinc_prob == 0.1
    assert c.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert c.blur_sigma == (0.2, 3.0) and c.betag_range == (0.5, 4.0) and c.betap_range == (1.0, 2.0)
    assert c.resize_prob == (0.2, 0.7, 0.1) and c.resize_range == (0.15, 1.5)
    assert c.gaussian_noise_prob == 0.5 and c.noise_range == (1.0, 30.0) and c.poisson_scale_range == (0.05, 3.0)
    assert c.gray_noise_prob == 0.4 and c.jpeg_range == (30.0, 95.0)
    assert c.second_blur_prob == 0.8 and c.blur_sigma2 == (0.2, 1.5)
    assert c.resize_prob2 == (0.3, 0.4, 0.3) and c.resize_range2 == (0.3, 1.2)
    assert c.noise_range2 == (1.0, 25.0) and c.poisson_scale_range2 == (0.05, 2.5) and c.jpeg_range2 == (30.0, 95.0)
    assert c.final_sinc_prob == 0.8 and c.final_resize_first_prob == 0.5


def test_elq_preset_widens_ranges_and_uses_scale_16():
    c = DegradationConfig.extreme()
    assert (c.preset_name, c.preset_version, c.scale) == ("elq", 1, 16)
    assert c.kernel_size_range == c.kernel_size_range2 == c.final_kernel_size_range == (7, 41)
    assert c.blur_sigma == (0.2, 6.0) and c.betag_range == (0.5, 8.0) and c.resize_range == (0.05, 1.5)
    assert c.noise_range == (1.0, 50.0) and c.poisson_scale_range == (0.05, 5.0)
    assert c.blur_sigma2 == (0.2, 3.0) and c.betag_range2 == (0.5, 8.0) and c.resize_range2 == (0.15, 1.2)
    assert c.noise_range2 == (1.0, 40.0) and c.poisson_scale_range2 == (0.05, 4.0)
    assert c.jpeg_range == c.jpeg_range2 == (10.0, 95.0)
    # everything else is the LQ setting
    lq = DegradationConfig.realesrgan().to_dict()
    changed = {k for k, v in c.to_dict().items() if lq[k] != v}
    assert changed == {
        "preset_name",
        "scale",
        "kernel_size_range",
        "blur_sigma",
        "betag_range",
        "resize_range",
        "noise_range",
        "poisson_scale_range",
        "jpeg_range",
        "kernel_size_range2",
        "blur_sigma2",
        "betag_range2",
        "resize_range2",
        "noise_range2",
        "poisson_scale_range2",
        "jpeg_range2",
        "final_kernel_size_range",
    }


@pytest.mark.parametrize("name,expected", [("lq", "lq"), ("elq", "elq"), ("realesrgan", "lq"), ("extreme", "elq")])
def test_from_preset(name, expected):
    assert DegradationConfig.from_preset(name).preset_name == expected


def test_the_elq_range_preset_is_elq_with_a_final_scale_of_4_to_16():
    ranged, elq = DegradationConfig.from_preset("elq-range"), DegradationConfig.extreme()
    assert (ranged.preset_name, ranged.preset_version, ranged.scale_range, ranged.scale) == (
        "elq-range",
        1,
        (4, 16),
        16,
    )
    differ = {k for k, v in ranged.to_dict().items() if elq.to_dict().get(k) != v}
    assert differ == {"preset_name", "scale_range"}
    assert DegradationConfig.from_json_string(ranged.to_json_string()) == ranged


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown degradation preset 'hq'.*elq"):
        DegradationConfig.from_preset("hq")


def test_json_round_trip(tmp_path):
    config = DegradationConfig.extreme()
    path = tmp_path / "elq.json"
    config.to_json_file(path)
    assert json.loads(path.read_text())["scale"] == 16
    assert DegradationConfig.from_json_file(path) == config
    assert DegradationConfig.from_dict(config.to_dict()) == config


def test_unknown_keys_are_named():
    d = DegradationConfig.realesrgan().to_dict()
    d["blur_sigmaa"] = [0.1, 1.0]
    with pytest.raises(ValueError, match="blur_sigmaa"):
        DegradationConfig.from_dict(d)


def test_corrupt_json_file_is_a_value_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        DegradationConfig.from_json_file(path)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("blur_sigma", (-0.1, 1.0), "blur_sigma"),
        ("noise_range2", (-1.0, 5.0), "noise_range2"),
        ("sinc_prob", 1.5, "sinc_prob"),
        ("gray_noise_prob2", -0.1, "gray_noise_prob2"),
        ("resize_range", (1.5, 0.15), "resize_range has min > max"),
        ("jpeg_range", (30.0, 100.0), r"jpeg_range must lie in \[1, 100\)"),
        ("jpeg_range2", (0.0, 90.0), "jpeg_range2"),
        ("kernel_size_range", (8, 21), "kernel_size_range"),
        ("kernel_size_range2", (21, 7), "kernel_size_range2"),
        ("kernel_prob", (0.5, 0.5, 0.0, 0.0, 0.0, 0.1), "kernel_prob must sum to 1"),
        ("kernel_list", ("iso", "box"), "kernel_list"),
        ("resize_prob2", (0.5, 0.5), "resize_prob2"),
        ("resize_modes", ("nearest",), "resize_modes"),
        ("scale", 0, "scale"),
        ("final_resize_first_prob", 2, "final_resize_first_prob"),
    ],
)
def test_invalid_values_raise_naming_the_field(field, value, message):
    d = DegradationConfig.realesrgan().to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=message):
        DegradationConfig.from_dict(d)


def test_kernel_sizes_are_capped_in_the_constructor_and_in_from_dict():
    for build in (
        lambda: DegradationConfig(final_kernel_size_range=(7, 999)),
        lambda: DegradationConfig.from_dict({**DegradationConfig.extreme().to_dict(), "kernel_size_range": [7, 999]}),
    ):
        with pytest.raises(ValueError, match="<= 101"):
            build()
    with pytest.raises(ValueError, match="jpeg_range"):
        DegradationConfig.from_dict({**DegradationConfig.extreme().to_dict(), "jpeg_range": [-5, 30]})


@pytest.mark.parametrize(
    "field", ["resize_modes", "kernel_size_range", "kernel_list", "kernel_prob", "final_kernel_size_range"]
)
@pytest.mark.parametrize("value", [7, None, "iso"])
def test_a_scalar_where_a_list_belongs_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be a list"):
        DegradationConfig.from_dict({**DegradationConfig.extreme().to_dict(), field: value})
