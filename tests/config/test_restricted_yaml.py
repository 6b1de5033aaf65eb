"""d2lite never runs code from a YAML config: the restricted evaluator and the safe loader."""

import pytest

from d2lite.config import get_cfg
from d2lite.config.restricted_yaml import RestrictedYAMLError, load_yaml, restricted_eval


def test_detectron2s_shipped_expressions():
    # configs/Base-RetinaNet.yaml
    sizes = restricted_eval("[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]")
    assert sizes == [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]
    # projects/Panoptic-DeepLab/configs/...dsconv.yaml
    assert restricted_eval("[int(x * 0.1 * 640) for x in range(5, 16)]") == [int(x * 0.1 * 640) for x in range(5, 16)]


@pytest.mark.parametrize(
    "expression, value",
    [
        ("1", 1),
        ("-2.5", -2.5),
        ("(1, 2.0)", (1, 2.0)),
        ("[[1, 2], [3]]", [[1, 2], [3]]),
        ("7 // 2 + 7 % 2 - 3 / 4", 7 // 2 + 7 % 2 - 3 / 4),
        ("[x * y for x in range(3) for y in [1, 10] if x != 1]", [0, 0, 2, 20]),
        ("[[y for y in range(x)] for x in range(3)]", [[], [0], [0, 1]]),
        ("[round(x / 3, 2) for x in (1, 2)]", [0.33, 0.67]),
        ("max([abs(-3), min(1, 2), sum([1, 2]), len([0, 0])])", 3),
        ("tuple([float(1), 2])", (1.0, 2)),
        ("[x for x in range(10) if 2 < x <= 4]", [3, 4]),
    ],
)
def test_allowed_expressions(expression, value):
    assert restricted_eval(expression) == value


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("__import__('os').system('echo hacked')", "is not allowed"),
        ("open('/etc/passwd').read()", "is not allowed"),
        ("().__class__.__bases__[0].__subclasses__()", "is not allowed"),
        ("eval('1')", "is not allowed"),
        ("(lambda: 1)()", "is not allowed"),
        ("{1: 2}", "Dict"),
        ("'abc'", "not a number"),
        ("[x for x in 'abc']", "not a number"),
        ("[0] * 10**9", "numbers only"),
        ("2 ** 100000", "power is too large"),
        ("((2 ** 1000) ** 1000) ** 1000", "power is too large"),
        ("[10 ** 1000 * 10 ** 1000 for x in [1]]", "more than 4096 bits"),
        ("[[x for x in range(100000)] for y in range(100000)]", "more than 100000 list elements"),
        ("[len(range(99999)) for y in range(3)]", "more than 100000 list elements"),
        ("10.0 ** 400", "out of range"),
        ("1e308 * 10", "finite"),
        ("(-8) ** 0.5", "finite"),
        ("range(10**9)", "longer than"),
        ("[0, 1] * 3", "numbers only"),
        ("x + 1", "not a comprehension variable"),
        ("[y for x in range(2)]", "not a comprehension variable"),
        ("[a for (a, b) in [(1, 2)]]", "one plain name"),
        ("int(x=1)", "keyword arguments"),
        ("[*range(3)]", "starred"),
        ("1 if True else 2", "IfExp"),
        ("True", "not a number"),
        ("1 +", "not a Python expression"),
        ("1 / 0", "division by zero"),
    ],
)
def test_rejected_expressions(expression, reason):
    with pytest.raises(RestrictedYAMLError, match=reason):
        restricted_eval(expression)


def test_load_yaml_rejects_code_and_names_file_line_and_key(tmp_path):
    marker = tmp_path / "pwned"
    yaml_file = tmp_path / "evil.yaml"
    yaml_file.write_text(
        f"MODEL:\n  ANCHOR_GENERATOR:\n    SIZES: !!python/object/apply:eval [\"open('{marker}', 'w').write('x')\"]\n"
    )
    with pytest.raises(RestrictedYAMLError) as e:
        load_yaml(str(yaml_file))
    message = str(e.value)
    assert "evil.yaml" in message and "line 3" in message and "key MODEL.ANCHOR_GENERATOR.SIZES" in message
    assert not marker.exists()  # nothing ran
    # the same error through get_cfg().merge_from_file, even with detectron2's allow_unsafe=True
    with pytest.raises(RestrictedYAMLError, match="MODEL.ANCHOR_GENERATOR.SIZES"):
        get_cfg().merge_from_file(str(yaml_file), allow_unsafe=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value, tag",
    [
        ('!!python/object/apply:os.system ["echo hacked"]', "!!python/object/apply:os.system"),
        ("!!python/name:os.system ''", "!!python/name:os.system"),
        ("!!python/object/new:subprocess.Popen [[echo]]", "!!python/object/new:subprocess.Popen"),
        ("!!python/module:os ''", "!!python/module:os"),
    ],
)
def test_other_python_tags_are_rejected(tmp_path, value, tag):
    yaml_file = tmp_path / "tagged.yaml"
    yaml_file.write_text(f"SOLVER:\n  STEPS:\n    - 1\n    - {value}\n")
    with pytest.raises(RestrictedYAMLError, match=rf"tagged.yaml, line 4, key SOLVER.STEPS\[1\]: the tag {tag}"):
        load_yaml(str(yaml_file))


def test_eval_tag_needs_one_string(tmp_path):
    yaml_file = tmp_path / "args.yaml"
    yaml_file.write_text('A: !!python/object/apply:eval ["1", "2"]\n')
    with pytest.raises(RestrictedYAMLError, match=r"key A: write .* \(one string\)"):
        load_yaml(str(yaml_file))


def test_tuples_empty_files_and_non_mappings(tmp_path):
    (tmp_path / "t.yaml").write_text("A: !!python/tuple [1, 2]\nB: [3]\n")
    assert load_yaml(str(tmp_path / "t.yaml")) == {"A": (1, 2), "B": [3]}
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(str(tmp_path / "empty.yaml")) == {}
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(RestrictedYAMLError, match="list.yaml must hold a mapping"):
        load_yaml(str(tmp_path / "list.yaml"))
    (tmp_path / "broken.yaml").write_text("A: [1\n")
    with pytest.raises(RestrictedYAMLError, match="broken.yaml is not a valid YAML"):
        load_yaml(str(tmp_path / "broken.yaml"))
