"""Everything of a tune: LoRA and FaceID prompts made on a base tune, prompt inputs,
videos and face-swap images, against the stand-in."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import check_manifest
from tests.helpers import blob_file, run_fetch, sha256, stored_blobs
from tests.standin import Body, Stall, StandIn, Status
from tune_archiver.astria import client
from tune_archiver.cli.main import main
from tune_archiver.commands import unread

FLUX = 1504944  # the base tune LoRA prompts are created on


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def add_tune(standin: StandIn, tune_id: int, **fields: Any) -> None:
    ckpt = standin.add_file(f"ckpt-{tune_id}", os.urandom(4_000 + tune_id))
    standin.add_tune(tune_id, [ckpt], [standin.add_file(f"img-{tune_id}", os.urandom(900))],
                     **fields)


def incomplete_each(archive: Path, failed: list[str], said: str) -> None:
    """Tunes 10 and 11 each failed on one line of `failed` saying `said`, and each is
    archived (checkpoint and photo ok) but not complete."""
    assert sorted(line.split(":")[2] for line in failed) == [" tune 10 (Tune 10)",
                                                            " tune 11 (Tune 11)"]
    assert all(said in line for line in failed)
    for tune_id in (10, 11):
        document = check_manifest(archive / "manifests" / f"{tune_id}.json")
        assert document["complete"] is False
        assert {(e["kind"], e["status"]) for e in document["assets"]} == {
            ("checkpoint", "ok"), ("training_image", "ok")}


def entries(archive: Path, tune_id: int, kind: str) -> list[dict[str, Any]]:
    document = check_manifest(archive / "manifests" / f"{tune_id}.json")
    return [entry for entry in document["assets"] if entry["kind"] == kind]


def test_prompts_naming_the_tune_on_its_base_tune_are_archived_with_it(
    standin: StandIn, archive: Path
) -> None:
    """<lora:ID:..> and <faceid:ID:..> prompts on the base tune join the tune's own prompts,
    each with its text and the tune it was created on; a prompt naming another tune does not."""
    add_tune(standin, 10)
    standin.add_prompt(10, 500, "ohwx woman", [standin.add_file("own", b"own" * 300)])
    standin.add_prompt(FLUX, 501, "<lora:10:1> ohwx at sea", [standin.add_file("a", b"a" * 900)])
    standin.add_prompt(FLUX, 502, "x <faceid:10:0.8>", [standin.add_file("b", b"b" * 900)])
    standin.add_prompt(FLUX, 503, "<lora:100:1> other", [standin.add_file("c", b"c" * 900)])
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    found = {(e["prompt_id"], e["prompt_tune_id"], e["prompt_text"], e["status"])
             for e in entries(archive, 10, "prompt_image")}
    assert found == {(500, 10, "ohwx woman", "ok"), (501, FLUX, "<lora:10:1> ohwx at sea", "ok"),
                     (502, FLUX, "x <faceid:10:0.8>", "ok")}
    assert not blob_file(archive, b"c" * 900).exists()


def test_an_account_of_more_prompts_than_a_tune_may_list_still_gives_its_named_ones(
    standin: StandIn, archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /prompts lists every prompt the account ever made: more than one tune's
    listing may hold (MAX_LISTED, here 4) is still paged through, and the prompt naming
    the tune, listed last of twelve, is archived with it; the tune is complete."""
    monkeypatch.setattr(client, "MAX_LISTED", 4)
    add_tune(standin, 10)
    standin.add_prompt(FLUX, 700, "<lora:10:1> at sea", [standin.add_file("sea", b"s" * 900)])
    for prompt_id in range(701, 712):  # newer, naming no tune
        standin.add_prompt(FLUX, prompt_id, "a castle", [standin.add_file(f"p{prompt_id}", b"")])
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    [entry] = entries(archive, 10, "prompt_image")
    assert (entry["prompt_id"], entry["status"]) == (700, "ok")
    assert check_manifest(archive / "manifests" / "10.json")["complete"] is True


def test_account_prompts_are_listed_once_for_every_tune_of_the_run(
    standin: StandIn, archive: Path
) -> None:
    """Three tunes fetched with --prompts page through GET /prompts once, not thrice."""
    for tune_id in (10, 11, 12):
        add_tune(standin, tune_id)
    for prompt_id in range(600, 607):  # two pages of five
        standin.add_prompt(FLUX, prompt_id, f"<lora:{10 + prompt_id % 3}:1>",
                           [standin.add_file(f"p{prompt_id}", os.urandom(700))])
    assert run_fetch(standin, archive, "10", "11", "12", "--prompts") == 0
    assert [r.path for r in standin.seen("api", "/prompts")] == [
        "/prompts?limit=120", "/prompts?limit=120&before_id=602",
        "/prompts?limit=120&before_id=600"]
    assert sum(len(entries(archive, t, "prompt_image")) for t in (10, 11, 12)) == 7


def test_a_prompt_naming_two_tunes_is_in_both_manifests_and_stored_once(
    standin: StandIn, archive: Path
) -> None:
    """A prompt using two LoRAs is archived in both tunes' manifests; its image is one blob."""
    add_tune(standin, 10)
    add_tune(standin, 11)
    image = os.urandom(2_000)
    standin.add_prompt(FLUX, 700, "<lora:10:0.6> and <lora:11:0.4>",
                       [standin.add_file("both", image)])
    assert run_fetch(standin, archive, "10", "11", "--prompts") == 0
    for tune_id in (10, 11):
        [entry] = entries(archive, tune_id, "prompt_image")
        assert (entry["prompt_id"], entry["sha256"]) == (700, sha256(image))
    assert len(stored_blobs(archive)) == 5  # two checkpoints, two training images, one image
    assert len(standin.seen("cdn", "/files/both")) == 1


def test_prompt_inputs_and_videos_are_archived_with_their_kind_and_type(
    standin: StandIn, archive: Path
) -> None:
    """input_image, image_references[], input_video, then mask_image become prompt_input
    entries in that order; a generated video is a prompt_image with its content type."""
    add_tune(standin, 10)
    inputs = [os.urandom(800 + i) for i in range(5)]
    urls = [standin.add_file(f"in{i}", data) for i, data in enumerate(inputs)]
    video = b"\x00\x00\x00\x18ftypmp42" + os.urandom(3_000)
    standin.add_file("video", video)
    standin.faults["video"] = [Body(video, "video/mp4")]
    standin.add_prompt(10, 800, "ohwx dancing", [standin.file_url("video")],
                       mask_image=urls[4], input_image=urls[0], image_references=urls[1:3],
                       input_video=urls[3], seed=42)
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    got = [(e["index"], e["prompt_id"], e["sha256"]) for e in entries(archive, 10, "prompt_input")]
    assert got == [(i, 800, sha256(data)) for i, data in enumerate(inputs)]
    [output] = entries(archive, 10, "prompt_image")
    assert (output["sha256"], output["content_type"]) == (sha256(video), "video/mp4")


def test_face_swap_images_are_archived_as_their_own_kind(
    standin: StandIn, archive: Path
) -> None:
    """A LoRA tune's face_swap_images[] are archived as face_swap_image, without --prompts."""
    swaps = [os.urandom(1_000 + i) for i in range(2)]
    add_tune(standin, 10, face_swap_images=[
        standin.add_file(f"swap{i}", data) for i, data in enumerate(swaps)])
    assert run_fetch(standin, archive, "10") == 0
    got = [(e["index"], e["sha256"], e["status"])
           for e in entries(archive, 10, "face_swap_image")]
    assert got == [(i, sha256(data), "ok") for i, data in enumerate(swaps)]


def test_an_expired_file_of_a_base_tune_prompt_is_renewed_from_that_prompt(
    standin: StandIn, archive: Path
) -> None:
    """A LoRA prompt's image refused as expired is renewed by asking for that prompt on
    the base tune (GET /tunes/BASE/prompts/ID), not the LoRA tune's own prompts."""
    add_tune(standin, 10)
    image = os.urandom(1_500)
    standin.add_file("lora-image", image)
    prompt = standin.add_prompt(
        FLUX, 900, "<lora:10:1>", [standin.file_url("lora-image", query="X-Amz-Signature=old")])
    expired = Status(403, body=b"<Error><Message>Request has expired</Message></Error>")
    standin.faults["lora-image"] = [expired]

    def renew(_: object) -> None:  # the next answer for the prompt carries a new signature
        prompt["images"] = [standin.file_url("lora-image", query="X-Amz-Signature=new")]

    standin.before_prompt = renew
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    [entry] = entries(archive, 10, "prompt_image")
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(image))
    assert [r.path for r in standin.seen("api", f"/tunes/{FLUX}/prompts/900")] == [
        f"/tunes/{FLUX}/prompts/900"]
    signatures = [r.path.rsplit("=", 1)[1] for r in standin.seen("cdn", "/files/lora-image")]
    assert signatures == ["old", "new"]


def test_account_prompts_that_cannot_be_listed_leave_every_tune_incomplete(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """If GET /prompts cannot be paged, each tune says so and is not complete, yet its
    checkpoint and photos are archived (not lost for a listing of generated images)."""
    add_tune(standin, 10)
    add_tune(standin, 11)
    for prompt_id in range(600, 607):
        standin.add_prompt(FLUX, prompt_id, "<lora:10:1>", [])
    standin.ignore_before_id = True
    standin.misbehaving_paths = ("/prompts",)
    assert run_fetch(standin, archive, "10", "11", "--prompts") == 1
    errors = capsys.readouterr().err.splitlines()
    incomplete_each(archive, errors, "the account's prompts: asked for ids before 602")


def test_account_prompts_that_time_out_leave_every_tune_incomplete_not_the_run(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GET /prompts silent past --read-timeout, while the tunes answer: each tune says
    so and is archived (not complete, exit 1), not the whole run given up as "the API
    could not be reached" (exit 4) with nothing archived."""
    add_tune(standin, 10)
    add_tune(standin, 11)
    standin.add_prompt(FLUX, 600, "<lora:10:1>", [])
    standin.page_faults = [Stall(), Stall()]  # the first listing asked for: GET /prompts
    assert run_fetch(standin, archive, "10", "11", "--prompts", "--read-timeout", "0.3",
                     "--retries", "1") == 1
    errors = capsys.readouterr().err.splitlines()
    failed = [line for line in errors if line.startswith("tune-archiver: error:")]
    incomplete_each(archive, failed, "prompt files not archived: no data for 0.3 s")


def test_a_malformed_prompt_fails_its_own_files_only(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One prompt whose images are not a list is that prompt's failure, said on one line:
    the tune's checkpoint, training image and other prompts are archived, the manifest
    is written but not complete, and the run exits 1."""
    add_tune(standin, 10)
    good = os.urandom(1_200)
    standin.add_prompt(10, 500, "ohwx", [standin.add_file("good", good)])
    standin.add_prompt(10, 501, "ohwx bad", [])["images"] = "https://cdn/x.png"
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    document = check_manifest(archive / "manifests" / "10.json")
    assert document["complete"] is False
    got = {(e["kind"], e["status"]) for e in document["assets"]}
    assert got == {("checkpoint", "ok"), ("training_image", "ok"), ("prompt_image", "ok")}
    assert blob_file(archive, good).exists()
    [line] = capsys.readouterr().err.splitlines()
    assert line == ("tune-archiver: error: tune 10 (Tune 10): prompt files not archived: "
                    "the prompts of tune 10: prompt 501: 'images' is not a list")


def test_prompts_not_listed_keep_what_their_files_were(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the account's prompts answer an HTML page with 200, a LoRA prompt's image
    archived before stays ok, and one that failed before is not called gone upstream
    (never asked for again) for a listing that could not be read: the next run asks."""
    add_tune(standin, 10)
    image = os.urandom(1_300)
    standin.add_prompt(FLUX, 500, "<lora:10:1>", [standin.add_file("kept", image)])
    standin.add_prompt(FLUX, 501, "<lora:10:1> b", [standin.file_url("missing")])
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    standin.page_faults = [Status(200, {"Content-Type": "text/html"}, b"<html>oops</html>")]
    capsys.readouterr()
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    got = {(e["prompt_id"], e["status"]) for e in entries(archive, 10, "prompt_image")}
    assert got == {(500, "ok"), (501, "failed")}
    assert blob_file(archive, image).exists()
    line, failed = capsys.readouterr().err.splitlines()
    assert line.endswith("prompt files not archived: the account's prompts: "
                         "the API returned an HTML page, not JSON (a captive portal's, a "
                         "proxy's or a firewall's sign-in page?)")
    assert "prompt_image 0 of prompt 501: not asked for again: its prompt could not be " \
           "read" in failed
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    assert len(standin.seen("cdn", "/files/missing")) == 2


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_only_checkpoints_lists_no_prompts(
    standin: StandIn, archive: Path, dry_run: list[str]
) -> None:
    """--prompts --only checkpoints asks the API for no prompt (their files are left out),
    and the checkpoint is archived (or previewed)."""
    add_tune(standin, 10)
    standin.add_prompt(10, 500, "ohwx", [standin.add_file("own", b"own" * 300)])
    standin.add_prompt(FLUX, 501, "<lora:10:1>", [standin.add_file("a", b"a" * 900)])
    assert run_fetch(standin, archive, "10", "--prompts", "--only", "checkpoints",
                     *dry_run) == 0
    assert [r.path for r in standin.seen("api")] == ["/tunes/10"]
    assert not standin.seen("cdn", "/files/own")


def test_a_failed_prompt_file_is_kept_while_its_prompts_cannot_be_read(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt image that failed stays in the manifest, failed, through a run whose
    prompts could not be read: dropped there, a later run that finds its prompt deleted
    upstream knew nothing of it and called the tune complete, exit 0, though that image
    was never archived. Now that run says it gone upstream, never archived."""
    add_tune(standin, 10)
    standin.add_prompt(FLUX, 500, "<lora:10:1>", [standin.add_file("kept", os.urandom(1_300))])
    standin.add_prompt(FLUX, 501, "<lora:10:1> b", [standin.file_url("missing")])
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    standin.page_faults = [Status(200, {"Content-Type": "text/html"}, b"<html>oops</html>")]
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    assert {(e["prompt_id"], e["status"]) for e in entries(archive, 10, "prompt_image")} == {
        (500, "ok"), (501, "failed")}
    standin.page_faults = [Status(200, {"Content-Type": "text/html"}, b"<html>oops</html>")]
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    [kept] = [e for e in entries(archive, 10, "prompt_image") if e["prompt_id"] == 501]
    assert kept["error"].count("its last error") == 1  # said once, however many runs
    standin.prompts[FLUX] = [p for p in standin.prompts[FLUX] if p["id"] != 501]
    capsys.readouterr()
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    document = check_manifest(archive / "manifests" / "10.json")
    assert document["complete"] is False
    assert {(e["prompt_id"], e["status"]) for e in entries(archive, 10, "prompt_image")} == {
        (500, "ok"), (501, "gone")}
    assert "never archived" in capsys.readouterr().err


def test_a_video_prompt_naming_the_tune_in_its_video_prompt_is_archived_with_it(
    standin: StandIn, archive: Path
) -> None:
    """Seedance 2 reference-to-video names the tune in `video_prompt`, not `text` (Astria's
    prompt docs; `astria video --video-prompt "<faceid:ID:1> woman ..."` sends no text):
    the video made from the tune's photos is the tune's generated file too."""
    seedance = 3_000_001  # the video model's tune the prompt is created on
    add_tune(standin, 10, model_type="faceid", ckpt_url=None, ckpt_urls=[])
    video = b"\x00\x00\x00\x18ftypmp42" + os.urandom(2_000)
    standin.add_prompt(seedance, 950, None, [standin.add_file("runway", video)],  # type: ignore[arg-type]
                       video_model="seedance2_fast_720p",
                       video_prompt="<faceid:10:1> woman walks down a runway")
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    [entry] = entries(archive, 10, "prompt_image")
    assert (entry["prompt_id"], entry["prompt_tune_id"], entry["sha256"], entry["status"]) == (
        950, seedance, sha256(video), "ok")


@pytest.mark.parametrize("text", [None, "", " "])
def test_a_text_to_video_prompts_video_prompt_is_its_recorded_text(
    standin: StandIn, archive: Path, text: str | None
) -> None:
    """Seedance 2 makes a video from a `video_prompt` with no `text` (Astria's
    docs/features/video.md, text-to-video): those words made the file, so they are the
    prompt_text recorded (an empty one told nothing), redacted as a text is; with a
    text, the text is recorded, as before."""
    seedance = 3_000_001
    add_tune(standin, 10, model_type="faceid", ckpt_url=None, ckpt_urls=[])
    standin.add_prompt(seedance, 950, text, [standin.add_file("v", b"v" * 900)],  # type: ignore[arg-type]
                       video_prompt="<faceid:10:1> woman, key=light, https://h/a.jpg?sig=s3cr3t")
    standin.add_prompt(seedance, 951, "ohwx woman <faceid:10:1>",
                       [standin.add_file("w", b"w" * 900)], video_prompt="she smiles")
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    assert sorted((e["prompt_id"], e["prompt_text"]) for e in entries(archive, 10, "prompt_image")
                  ) == [(950, "<faceid:10:1> woman, key=light, https://h/a.jpg?sig=REDACTED"),
                        (951, "ohwx woman <faceid:10:1>")]


def test_face_swap_images_not_read_fail_alone(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """face_swap_images is in no Astria doc (its shape is a guess): sent as anything but a
    list of URLs, it fails on one line and leaves the tune not complete, while the
    checkpoint and photos are archived, not lost with it."""
    add_tune(standin, 10, face_swap_images=[{"url": standin.add_file("swap", b"s" * 900)}])
    assert run_fetch(standin, archive, "10") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "face-swap images not archived" in line
    assert "'face_swap_images'" in line
    document = check_manifest(archive / "manifests" / "10.json")
    assert document["complete"] is False
    assert sorted((e["kind"], e["status"]) for e in document["assets"]) == [
        ("checkpoint", "ok"), ("training_image", "ok")]


def test_a_failed_face_swap_image_stays_failed_while_the_field_cannot_be_read(
    standin: StandIn, archive: Path
) -> None:
    """A face-swap image that failed is not taken as deleted upstream ('gone', never
    asked for again) when face_swap_images is next sent unreadable: it stays failed."""
    add_tune(standin, 10, face_swap_images=[standin.file_url("missing")])
    assert run_fetch(standin, archive, "10") == 1
    standin.tunes[10]["face_swap_images"] = "not a list"
    assert run_fetch(standin, archive, "10") == 1
    [entry] = entries(archive, 10, "face_swap_image")
    assert entry["status"] == "failed"


def test_a_motion_control_prompt_naming_the_tune_without_a_weight_is_archived_with_it(
    standin: StandIn, archive: Path
) -> None:
    """Astria's docs (docs/features/video.md, Motion control) name a FaceID tune as
    `<faceid:123>`, no weight: that prompt, made on the base tune, is the tune's too."""
    add_tune(standin, 10, model_type="faceid")
    standin.add_prompt(FLUX, 501, "ohwx man <faceid:10>", [standin.add_file("m", b"m" * 900)],
                       video_prompt="match the dance moves")
    standin.add_prompt(FLUX, 502, "ohwx man <faceid:100>", [standin.add_file("o", b"o" * 900)])
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    assert [(e["prompt_id"], e["status"]) for e in entries(archive, 10, "prompt_image")] == [
        (501, "ok")]
    assert not blob_file(archive, b"o" * 900).exists()


def failed_in_workspace_42_then_fetched_personal(
    standin: StandIn, archive: Path, *more_images: str | None
) -> bytes:
    """Prompt 501 of workspace 42, naming FaceID tune 10, with `more_images` after its
    image: the image failed (404) under --workspace all, then a --prompts run of the
    personal scope, which does not list the prompt, ran (both exit 1). The image's bytes."""
    standin.scoped_prompts = True
    add_tune(standin, 10, model_type="faceid")
    image = os.urandom(1_200)
    standin.add_prompt(FLUX, 501, "<faceid:10:1> woman",
                       [standin.add_file("ws-image", image), *more_images])
    standin.prompt_workspaces[501] = "42"
    standin.faults["ws-image"] = [Status(404)]
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 1
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    return image


def test_a_failed_file_of_a_prompt_of_another_workspace_is_not_taken_for_deleted(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt made in workspace 42 (prompt[workspace_id]) naming a personal FaceID tune is
    listed by GET /prompts only in that scope. Its image failed under --workspace all; a
    later fetch --prompts of the personal scope, not listing it, took the file for deleted
    upstream: 'gone', never asked for again, so the next --workspace all run, which lists
    it, left it out for good, the tune complete. The prompt is asked for alone in every
    workspace first: there, the file stays failed, saying why, and is archived later."""
    image = failed_in_workspace_42_then_fetched_personal(standin, archive)
    [entry] = entries(archive, 10, "prompt_image")
    assert entry["status"] == "failed"
    assert "prompt 501 is not listed in the scope this run asks in" in entry["error"]
    assert "gone upstream" not in capsys.readouterr().err
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 0
    [entry] = entries(archive, 10, "prompt_image")
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(image))
    # One deleted upstream is gone, as before: asked for alone, Astria answers 404.
    standin.add_prompt(FLUX, 502, "<faceid:10:1> hat", [standin.file_url("none")])
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 1
    standin.prompts[FLUX] = [p for p in standin.prompts[FLUX] if p["id"] != 502]
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 1
    assert [e["status"] for e in entries(archive, 10, "prompt_image")
            if e["prompt_id"] == 502] == ["gone"]


def test_a_prompt_of_another_workspace_is_said_once_however_many_runs_ask(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each run of the personal scope wrapped the last error, its own line of the run
    before included, in another 'its prompt 501 is not listed ... (its last error: ...)':
    a daily cron's line and the manifest's entry grew by one sentence a day."""
    standin.scoped_prompts = True
    add_tune(standin, 10, model_type="faceid")
    standin.add_prompt(FLUX, 501, "<faceid:10:1> woman", [standin.add_file("ws", b"w" * 900)])
    standin.prompt_workspaces[501] = "42"
    standin.faults["ws"] = [Status(404)]
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 1
    for _ in range(3):
        assert run_fetch(standin, archive, "10", "--prompts") == 1
    [entry] = entries(archive, 10, "prompt_image")
    assert entry["status"] == "failed"
    assert entry["error"].count("its prompt 501 is not listed") == 1
    assert entry["error"].endswith("(its last error: HTTP 404 from "
                                   f"{standin.file_url('ws')})")
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.count("its last error") == 1


def test_a_prompt_not_told_deleted_keeps_its_failed_file_failed(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one request that tells a prompt of another workspace from a deleted one
    answering 503 (retries spent) made its failed file 'gone', never asked for again: the
    next --workspace all run, listing it, left it out for good, the tune complete, exit 0.
    Only Astria's 404 (or a key refused every workspace, as before) says deleted."""
    standin.scoped_prompts = True
    add_tune(standin, 10, model_type="faceid")
    image = os.urandom(1_100)
    standin.add_prompt(FLUX, 501, "<faceid:10:1> woman", [standin.add_file("ws", image)])
    standin.prompt_workspaces[501] = "42"
    standin.faults["ws"] = [Status(404)]
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 1

    def unavailable(_: int) -> None:
        raise web.HTTPServiceUnavailable()

    standin.before_prompt = unavailable
    for _ in range(2):  # said once, however many runs cannot tell
        assert run_fetch(standin, archive, "10", "--prompts") == 1
    [entry] = entries(archive, 10, "prompt_image")
    assert entry["status"] == "failed"
    assert entry["error"].startswith("cannot tell whether prompt 501 was deleted upstream")
    assert entry["error"].count("its last error") == 1
    assert entry["error"].endswith(f"(its last error: HTTP 404 from {standin.file_url('ws')})")
    assert "HTTP 503" in entry["error"]
    assert "gone upstream" not in capsys.readouterr().err
    standin.before_prompt = None
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 0
    [entry] = entries(archive, 10, "prompt_image")
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(image))


def test_a_prompt_of_another_workspace_is_asked_for_once_for_all_its_files(
    standin: StandIn, archive: Path
) -> None:
    """Each failed file no longer listed asked for its prompt alone: a prompt's four
    images (num_images=4) cost four requests, each retried after its own 500s (30 s,
    doubling) one after another, on every run of a daily cron of the personal scope."""
    standin.scoped_prompts = True
    add_tune(standin, 10, model_type="faceid")
    names = [f"ws-{i}" for i in range(4)]
    standin.add_prompt(FLUX, 501, "<faceid:10:1> woman",
                       [standin.add_file(n, os.urandom(900 + i)) for i, n in enumerate(names)])
    standin.prompt_workspaces[501] = "42"
    for name in names:
        standin.faults[name] = [Status(404)]
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 1
    standin.requests.clear()
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    assert len(standin.seen("api", f"/tunes/{FLUX}/prompts/501")) == 1
    assert [e["status"] for e in entries(archive, 10, "prompt_image")] == ["failed"] * 4


def test_a_prompts_failed_file_is_said_with_its_prompt(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each prompt's first image is its prompt_image 0: the line of one that failed, and
    its --json failure, name its prompt (its id, never its text), or a user with fifty
    prompts reads "prompt_image 0" and cannot tell which."""
    add_tune(standin, 10)
    standin.add_prompt(10, 500, "ohwx \x1b[2J", [standin.file_url("missing-a")])
    standin.add_prompt(10, 501, "ohwx b", [standin.file_url("missing-b")])
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    failed = sorted(capsys.readouterr().err.splitlines())
    assert [line.split(": ")[3] for line in failed] == [
        "prompt_image 0 of prompt 500", "prompt_image 0 of prompt 501"]
    assert all("\x1b" not in line for line in failed)
    assert run_fetch(standin, archive, "10", "--prompts", "--json") == 1
    document = json.loads(capsys.readouterr().out)
    assert sorted(f["prompt_id"] for f in document["tunes"][0]["failures"]) == [500, 501]


def test_prompts_not_read_keep_the_tune_not_complete_till_a_prompts_run_reads_them(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 'fetch 1 --prompts' whose prompts could not be read left no trace in the
    manifest but complete: false: verify said it 'all intact', and the daily fetch
    without --prompts wrote it complete (exit 0, list 'yes'), its generated images
    never archived. The manifest now says so (prompts_unread) till a --prompts run
    reads them: no other run makes it complete, and verify names it."""
    add_tune(standin, 1)
    seven = standin.add_file("seven.png", os.urandom(900))
    standin.add_prompt(1, 7, "ohwx woman", [seven])
    standin.page_faults = [Status(200, {"Content-Type": "text/html"}, b"<html>oops</html>")] * 2
    assert run_fetch(standin, archive, "1", "--prompts", "-q") == 1
    unread = check_manifest(archive / "manifests" / "1.json")["prompts_unread"]
    assert "the API returned an HTML page, not JSON" in unread
    assert run_fetch(standin, archive, "1", "-q") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["complete"] is False
    assert "the API returned an HTML page, not JSON" in document["prompts_unread"]
    capsys.readouterr()
    assert main(["verify", "--archive", str(archive)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune-archiver: error: tune 1: prompt_image: failed: the prompts "
                           "could not be read: ")
    assert line.endswith(f"(retry: tune-archiver fetch 1 --prompts --archive {archive})")
    assert main(["list", "--archive", str(archive)]) == 0
    assert "2 (prompts not read)" in capsys.readouterr().out.splitlines()[1]
    assert run_fetch(standin, archive, "1", "--prompts", "-q") == 0
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["complete"] is True
    assert "prompts_unread" not in document
    assert entries(archive, 1, "prompt_image")[0]["sha256"] == sha256(standin.files["seven.png"])
    assert blob_file(archive, standin.files["seven.png"]).is_file()


def test_prompts_unread_saying_no_reason_is_kept_and_named_all_the_same(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A manifest whose prompts_unread is empty (another tool's, a hand's) read not
    complete, and list said 'prompts not read', yet verify said it 'all intact' (exit 0)
    and a fetch without --prompts dropped it, so the next one wrote the tune complete,
    its prompts never read. An empty reason is a reason all the same."""
    add_tune(standin, 1)
    assert run_fetch(standin, archive, "1", "-q") == 0
    path = archive / "manifests" / "1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "prompts_unread": ""}))
    capsys.readouterr()
    assert main(["verify", "--archive", str(archive)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("tune-archiver: error: tune 1: prompt_image: failed: the prompts "
                           "could not be read")
    for _ in range(2):
        assert run_fetch(standin, archive, "1", "-q") == 0
        document = check_manifest(path)
        assert (document["complete"], document.get("prompts_unread")) == (False, "")
    assert run_fetch(standin, archive, "1", "--prompts", "-q") == 0
    assert check_manifest(path)["complete"] is True


def test_a_prompt_still_generating_leaves_the_tune_not_complete_till_its_images_come(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt Astria is still generating (trained_at null, no image, no user_error)
    lists none of its images yet: a 'fetch 10 --prompts' wrote the tune complete, exit 0,
    and its images were never archived once Astria deleted the tune. The tune now says
    so and is not complete (its input archived already) till a run finds the images;
    a prompt that failed (user_error, no image) is settled: nothing more to come."""
    add_tune(standin, 10)
    selfie = standin.add_file("selfie", os.urandom(800))
    pending = standin.add_prompt(FLUX, 700, "<faceid:10:1> at sea", [], trained_at=None,
                                 input_image=selfie)
    standin.add_prompt(FLUX, 701, "<faceid:10:1> nsfw", [], trained_at=None,
                       user_error="rejected")
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "prompt 700 is still generating" in line
    assert "prompt 701" not in line
    document = check_manifest(archive / "manifests" / "10.json")
    assert document["complete"] is False
    assert "prompt 700" in document["prompts_unread"]
    [entry] = entries(archive, 10, "prompt_input")
    assert (entry["prompt_id"], entry["status"]) == (700, "ok")
    image = os.urandom(1_500)
    pending.update(images=[standin.add_file("sea", image)], trained_at="2026-11-03T10:00:00Z")
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    [entry] = entries(archive, 10, "prompt_image")
    assert (entry["prompt_id"], entry["status"], entry["sha256"]) == (700, "ok", sha256(image))
    assert check_manifest(archive / "manifests" / "10.json")["complete"] is True


def test_a_failed_file_its_listed_prompt_no_longer_names_is_gone_not_elsewhere(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt this run lists that no longer names an image that failed (Astria took it
    off the prompt) has lost it upstream: asked for alone, the prompt was found, and the
    file said 'not listed in the scope this run asks in ... in another workspace: run
    fetch 10 --prompts --workspace all', failed for good (exit 1 each run, that command
    no help). It is gone, said once, without asking; the next run exits 0."""
    add_tune(standin, 10)
    kept = standin.add_file("kept", os.urandom(900))
    prompt = standin.add_prompt(FLUX, 700, "<lora:10:1> x", [kept, standin.file_url("lost")])
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    prompt["images"] = [kept]
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    [line] = capsys.readouterr().err.splitlines()[1:]
    assert "prompt_image 1 of prompt 700: gone upstream, never archived" in line
    assert "workspace" not in line
    assert standin.seen("api", "/tunes/1504944/prompts/700") == []
    assert run_fetch(standin, archive, "10", "--prompts") == 0
    assert [(e["index"], e["status"]) for e in entries(archive, 10, "prompt_image")] == [
        (0, "ok"), (1, "gone")]


def test_a_null_among_a_prompts_images_costs_that_one_alone(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt whose images hold a null (one Astria gives no URL for) beside three URLs
    failed whole: none of its images was archived, run after run, and all were lost with
    the tune. The URLs it holds are archived, as a tune's photos beside a null are; the
    tune says what was not read and is not complete."""
    add_tune(standin, 10)
    images = [os.urandom(900 + n) for n in range(3)]
    urls = [standin.add_file(f"i{n}", image) for n, image in enumerate(images)]
    standin.add_prompt(FLUX, 700, "<lora:10:1> x", [urls[0], None, *urls[1:]],
                       image_references=[standin.add_file("ref", b"r" * 900), 7])
    assert run_fetch(standin, archive, "10", "--prompts") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "prompt 700: 'images' holds something that is not a URL string" in line
    assert [(e["status"], e["sha256"]) for e in entries(archive, 10, "prompt_image")] == [
        ("ok", sha256(image)) for image in images]
    assert [e["status"] for e in entries(archive, 10, "prompt_input")] == ["ok"]
    assert check_manifest(archive / "manifests" / "10.json")["complete"] is False


def test_a_prompt_of_another_workspace_with_a_malformed_field_is_not_taken_for_deleted(
    standin: StandIn, archive: Path
) -> None:
    """A prompt of workspace 42 whose image failed, asked for alone by a run of the
    personal scope (8240e05), was taken for deleted when its answer held a malformed
    field (a null among its images): get_prompt refused it, the image went 'gone', and
    the next --workspace all run, listing it, never asked for it again: lost. The prompt
    is there all the same: the file stays failed, and is archived by that run."""
    image = failed_in_workspace_42_then_fetched_personal(standin, archive, None)
    [entry] = entries(archive, 10, "prompt_image")
    assert entry["status"] == "failed"
    assert run_fetch(standin, archive, "10", "--prompts", "--workspace", "all") == 1
    [entry] = entries(archive, 10, "prompt_image")
    assert (entry["status"], entry["sha256"]) == ("ok", sha256(image))


def unread_then_purged(standin: StandIn, archive: Path) -> None:
    """Tune 1 archived by a --prompts run that could not read its prompts (a listing
    page of HTML), then expired, Astria purging its prompts."""
    add_tune(standin, 1)
    standin.add_prompt(1, 7, "ohwx woman", [standin.add_file("seven.png", os.urandom(900))])
    standin.page_faults = [Status(200, {"Content-Type": "text/html"}, b"<html>oops</html>")] * 2
    assert run_fetch(standin, archive, "1", "--prompts", "-q") == 1
    standin.prompts.clear()
    standin.tunes[1]["expires_at"] = "2020-01-01T00:00:00Z"


def test_prompts_not_read_stay_unread_when_the_expired_tune_lists_none_since(
    standin: StandIn, archive: Path
) -> None:
    """A tune whose prompts a --prompts run could not read, Astria then purging them as
    the tune expired, was written complete by the next --prompts run, which read an empty
    listing: list said 'yes', verify 'all intact', its prompt images never archived. An
    empty listing of an expired tune proves nothing read: the mark stays."""
    unread_then_purged(standin, archive)
    run_fetch(standin, archive, "1", "--prompts", "-q")
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["complete"] is False
    assert "the API returned an HTML page, not JSON" in document["prompts_unread"]
    assert main(["verify", "--archive", str(archive), "--strict", "-q"]) == 1


def test_prompts_never_read_of_an_expired_tune_are_gone_upstream_said_once(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts a --prompts run could not read, purged as the tune expired: no run can read
    them now. verify failed the tune forever (exit 1) saying '(retry: ... --prompts)',
    a command that could never mend it, and the --prompts run that found them purged
    exited 0 saying nothing. They are gone upstream: said once by that run (exit 1),
    counted apart by verify (exit 0, 1 with --strict), the tune never complete."""
    unread_then_purged(standin, archive)
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", "--prompts", "--json") == 1
    said = capsys.readouterr()
    assert "prompt files gone upstream, never archived" in said.err
    [tune] = json.loads(said.out)["tunes"]
    assert tune["ok"] is False
    assert "Astria purged its prompts" in tune["prompts_gone"]
    assert run_fetch(standin, archive, "1", "--prompts", "--json") == 0  # said once
    said = capsys.readouterr()
    assert said.err == ""
    assert json.loads(said.out)["tunes"][0]["prompts_gone"] is None
    assert check_manifest(archive / "manifests" / "1.json")["complete"] is False
    assert main(["verify", "--archive", str(archive)]) == 0
    out, err = capsys.readouterr()
    assert "1 file gone upstream, never archived" in out
    assert "retry" not in err
    assert main(["verify", "--archive", str(archive), "--strict", "--json"]) == 1
    [gone] = json.loads(capsys.readouterr().out)["gone"]
    assert (gone["tune_id"], gone["kind"], gone["problem"]) == (1, "prompt_image", "gone")


def test_prompts_found_purged_are_said_gone_once_though_a_later_listing_fails(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts never read, found purged (said gone once), then a --prompts run whose
    listing fails again (an HTML page): it rewrote the mark with its own error, the
    'purged' ending lost, and the next run said the same prompts gone a second time
    (and counted them again in --json's prompts_gone). Purged is for good: it stays."""
    unread_then_purged(standin, archive)
    assert run_fetch(standin, archive, "1", "--prompts", "-q") == 1  # gone, said once
    standin.page_faults = [Status(200, {"Content-Type": "text/html"}, b"<html>oops</html>")] * 2
    run_fetch(standin, archive, "1", "--prompts", "-q")
    assert check_manifest(archive / "manifests" / "1.json")["prompts_unread"].endswith(
        unread.PURGED)
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", "--prompts", "--json") == 0
    said = capsys.readouterr()
    assert "gone upstream" not in said.err
    assert json.loads(said.out)["tunes"][0]["prompts_gone"] is None


def test_prompts_never_read_of_an_expired_tune_listing_some_since_are_not_called_read(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts a --prompts run could not read, the tune then expired, its listing showing
    one prompt still: the mark was cleared and the tune written complete (verify 'all
    intact'), though the prompts never read (7) may have been purged, their images never
    archived. Past its expiry no listing proves them all read: they are said gone once,
    the one listed archived, the tune never complete."""
    unread_then_purged(standin, archive)
    eight = standin.add_file("eight.png", os.urandom(900))
    standin.add_prompt(1, 8, "ohwx woman, again", [eight])
    capsys.readouterr()
    assert run_fetch(standin, archive, "1", "--prompts", "-q") == 1
    assert "prompt files gone upstream, never archived" in capsys.readouterr().err
    document = check_manifest(archive / "manifests" / "1.json")
    assert document["complete"] is False
    assert document["prompts_unread"].endswith(unread.PURGED)
    assert entries(archive, 1, "prompt_image")[0]["sha256"] == sha256(standin.files["eight.png"])


def test_prompts_read_again_of_a_live_tune_are_not_purged_by_our_clock_running_ahead(
    standin: StandIn, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts a --prompts run could not read, then read whole by the next one, the tune
    expiring in 2 hours by the API's Date, on a machine whose clock runs 5 hours ahead:
    past its expires_at by our clock alone, the mark ended PURGED, the prompts said
    'gone upstream, never archived' (exit 1) and the tune never complete, though Astria
    had just listed them all. Expired by both clocks, ours and the API's, as --all's
    --expiring-within and a file's 'gone upstream' decide."""
    soon = datetime.now(UTC) + timedelta(hours=2)
    add_tune(standin, 1, expires_at=soon.strftime("%Y-%m-%dT%H:%M:%SZ"))
    standin.add_prompt(1, 7, "ohwx woman", [standin.add_file("seven.png", os.urandom(900))])
    standin.page_faults = [Status(200, {"Content-Type": "text/html"}, b"<html>oops</html>")] * 2
    assert run_fetch(standin, archive, "1", "--prompts", "-q") == 1
    capsys.readouterr()
    ahead = lambda: datetime.now(UTC) + timedelta(hours=5)  # noqa: E731
    assert run_fetch(standin, archive, "1", "--prompts", "-q", clock=ahead) == 0
    assert "gone upstream" not in capsys.readouterr().err
    document = check_manifest(archive / "manifests" / "1.json")
    assert "prompts_unread" not in document
    assert document["complete"] is True
    assert entries(archive, 1, "prompt_image")[0]["sha256"] == sha256(standin.files["seven.png"])
