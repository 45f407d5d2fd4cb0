"""models.parse_tune: what it accepts from the API and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from tune_archiver.errors import DataError
from tune_archiver.models import Tune, named_tunes, parse_tune

C0 = "https://bucket.example/ckpt-0?X-Amz-Signature=a"
C1 = "https://bucket.example/ckpt-1?X-Amz-Signature=b"
I0 = "https://img.example/0.jpg"
I1 = "https://img.example/1.jpg"


def test_valid_tune() -> None:
    """A well-formed tune gives its id, title, checkpoints and images in order."""
    data = {"id": 7, "title": "John", "ckpt_urls": [C0, C1], "orig_images": [I0, I1]}
    tune = parse_tune(data, 7)
    assert isinstance(tune, Tune)
    assert tune.id == 7
    assert tune.title == "John"
    assert tune.checkpoint_urls == (C0, C1)
    assert tune.image_urls == (I0, I1)


def test_requested_id_is_optional() -> None:
    """Without a requested id, any valid id is accepted."""
    assert parse_tune({"id": 3}).id == 3


@pytest.mark.parametrize(
    ("fields", "checkpoints"),
    [
        ({"ckpt_urls": [C0], "ckpt_url": C0}, (C0,)),
        ({"ckpt_urls": [C0], "ckpt_url": C1}, (C0, C1)),
        ({"ckpt_urls": [], "ckpt_url": C1}, (C1,)),
        ({"ckpt_urls": None, "ckpt_url": C1}, (C1,)),
        ({"ckpt_urls": [C0, C1], "ckpt_url": None}, (C0, C1)),
        ({"ckpt_urls": [C0], "ckpt_url": ""}, (C0,)),
        ({}, ()),
        ({"ckpt_urls": [C0], "ckpt_url": C0.replace("Signature=a", "Signature=z")}, (C0,)),
        ({"ckpt_urls": [f"{C0}&id=1"], "ckpt_url": f"{C0}&id=2"},
         (f"{C0}&id=1", f"{C0}&id=2")),
        # Listed twice: each place its index in ckpt_urls, as README says (C1 is 2).
        ({"ckpt_urls": [C0, C0, C1], "ckpt_url": C0}, (C0, C0, C1)),
    ],
    ids=["same", "different", "empty-list", "null-list", "null-url", "empty-url", "neither",
         "signed-apart", "another-file", "listed-twice"],
)
def test_ckpt_url_merged_with_ckpt_urls(fields: dict[str, Any], checkpoints: tuple) -> None:
    """ckpt_url is appended to ckpt_urls unless it is already there: the same file
    signed on its own (its signature alone differs) was a second checkpoint entry, the
    checkpoint exported twice."""
    assert parse_tune({"id": 1, **fields}, 1).checkpoint_urls == checkpoints


def test_null_lists_give_empty_tuples() -> None:
    """Null ckpt_urls and orig_images (a tune still training) are empty, not an error."""
    tune = parse_tune({"id": 2, "ckpt_urls": None, "ckpt_url": None, "orig_images": None}, 2)
    assert tune.checkpoint_urls == ()
    assert tune.image_urls == ()


def test_unknown_fields_kept_in_raw() -> None:
    """Fields parse_tune does not know are kept as the API sent them."""
    data = {"id": 4, "branch": "flux1", "prompts": [{"id": 1, "text": "x"}], "title": 5}
    tune = parse_tune(data, 4)
    assert tune.raw == data
    assert tune.title is None  # a non-string title is not a title


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([{"id": 9}], "list"),
        ("tune", "str"),
        (None, "NoneType"),
        ({"title": "no id"}, "'id'"),
        ({"id": 0}, "'id'"),
        ({"id": -9}, "'id'"),
        ({"id": True}, "'id'"),
        ({"id": "9"}, "'id'"),
        ({"id": 9.0}, "'id'"),
        ({"id": 8}, "returned tune 8"),
    ],
    ids=["list", "str", "null", "no-id", "id-0", "id-negative", "id-true", "id-str", "id-float",
         "other-id"],
)
def test_invalid_tune_raises_data_error_naming_it(data: Any, words: str) -> None:
    """Each unusable tune object raises DataError saying which tune and what is wrong."""
    with pytest.raises(DataError) as info:
        parse_tune(data, 9)
    message = str(info.value)
    assert message.startswith("tune 9: ")
    assert words in message


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("<lora:10:1> ohwx woman", {10}),
        ("<faceid:10:0.8> and <LoRA:11:0.5>", {10, 11}),
        ("ohwx man <faceid:10>, no weight (Astria's motion-control example)", {10}),
        ("<lora:x:1>, lora:12:1, <lora:13x>, <faceid:>", set()),
        (None, set()),
    ],
)
def test_named_tunes_reads_lora_and_faceid_tags(text: str | None, named: set[int]) -> None:
    """Only <lora:ID:...> and <faceid:ID:...> (or <faceid:ID>) name a tune; anything else
    names none."""
    assert named_tunes(text) == named



@pytest.mark.parametrize(
    ("fields", "urls", "error"),
    [
        ({"ckpt_urls": C0}, ((), (I0,), (I1,)),
         "checkpoints not archived: 'ckpt_urls' is a string, not a list of URLs"),
        ({"ckpt_urls": [C0, 5]}, ((C0,), (I0,), (I1,)),
         "some checkpoints not archived: 'ckpt_urls' holds 1 item that is not a URL"),
        ({"ckpt_url": [C1]}, ((C0,), (I0,), (I1,)),
         "checkpoints not archived: 'ckpt_url' is a list, not a URL"),
        ({"orig_images": {"0": I0}}, ((C0,), (), (I1,)),
         "training images not archived: 'orig_images' is a JSON object, not a list of URLs"),
        ({"orig_images": [I0, None, I1, None]}, ((C0,), (I0, I1), (I1,)),
         "some training images not archived: 'orig_images' holds 2 items that are not a URL"),
        ({"face_swap_images": True}, ((C0,), (I0,), ()),
         "face-swap images not archived: 'face_swap_images' is true or false, not a list of URLs"),
    ],
    ids=["ckpt_urls-str", "ckpt_urls-int-item", "ckpt_url-list", "orig_images-dict",
         "orig_images-null-items", "face_swap_images-bool"],
)
def test_a_malformed_file_field_fails_alone(
    fields: dict[str, Any], urls: tuple[tuple[str, ...], ...], error: str
) -> None:
    """A file field that is not a list of URLs (or ckpt_url not one URL) is the tune's
    field error, naming the field: the URLs it does hold are kept, and so are the other
    fields' (a null among the training images must not cost the checkpoint)."""
    data = {"id": 9, "ckpt_urls": [C0], "orig_images": [I0], "face_swap_images": [I1], **fields}
    tune = parse_tune(data, 9)
    [(kind, said)] = tune.field_errors
    assert said == error
    assert (tune.checkpoint_urls, tune.image_urls, tune.face_swap_urls) == urls
    assert tune.unread_kinds == {kind}
