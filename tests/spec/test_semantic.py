"""Semantic spec schema: normalisation, every bad field named, reference-layout round trip."""
import pytest

from lwgpu.spec.semantic import from_reference, to_reference, validate_semantic_spec

GOOD = dict(
    data_type="Table", task_type="Classification", input_dim=4, output_dim=3, name="iris-a",
    description="Iris subset", tags=["Nature", "Education"], library="scikit-learn", license="mit",
    feature_descriptions=["sepal length", "sepal width", "petal length", "petal width"],
)


def test_normalises_values():
    s = validate_semantic_spec(GOOD)
    assert s["data_type"] == "table" and s["task_type"] == "classification"
    assert s["library"] == "sklearn" and s["license"] == "MIT"
    assert s["tags"] == ["Education", "Nature"]
    assert s["feature_descriptions"][3] == "petal width"


@pytest.mark.parametrize(
    "change,match",
    [
        ({"data_type": "video"}, "'data_type' must be one of"),
        ({"task_type": 3}, "'task_type'"),
        ({"input_dim": 0}, "'input_dim' must be a positive integer"),
        ({"output_dim": "3"}, "'output_dim'"),
        ({"tags": [""]}, "'tags'"),
        ({"license": "WTFPL"}, "'license'"),
        ({"name": "  "}, "'name' must not be empty"),
        ({"colour": "red"}, "unknown fields"),
        ({"feature_descriptions": {7: "x"}}, "outside"),
        ({"classes": [0, 1]}, "lists 2 classes but output_dim is 3"),
    ],
)
def test_bad_fields_named(change, match):
    with pytest.raises(ValueError, match=match):
        validate_semantic_spec({**GOOD, **change})


def test_missing_fields_and_partial():
    with pytest.raises(ValueError, match=r"lacks required fields \['task_type'"):
        validate_semantic_spec({k: v for k, v in GOOD.items() if k != "task_type"})
    assert validate_semantic_spec({"tags": "Health"}, partial=True) == {"tags": ["Health"]}
    with pytest.raises(ValueError, match="must be a dict"):
        validate_semantic_spec(["data_type"])


def test_reference_layout_round_trip():
    s = validate_semantic_spec(GOOD)
    ref = to_reference(s)
    assert ref["Data"]["Values"] == ["Table"] and ref["Library"]["Values"] == ["Scikit-learn"]
    assert ref["Input"]["Dimension"] == 4
    assert from_reference(ref) == s
