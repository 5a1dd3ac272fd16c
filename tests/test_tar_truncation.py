"""A tar cut anywhere (at a header, inside a header, inside a member, in the end-of-archive blocks) never
reads as a healthy, shorter shard: on the caption side (``read_shard``) and the image side (``ShardImages``)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.images.sources import ShardImages
from helpers.shards import Shard
from helpers.text.captions import CaptionSource, ShardStats, iter_tar_samples, read_shard

N_SAMPLES = 7


def tar_bytes(n: int = N_SAMPLES) -> bytes:
    """A webdataset tar of ``n`` samples (txt + png), as Python's tarfile writes it (padded to 10 KiB)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            img = io.BytesIO()
            Image.new("RGB", (4, 4), (10 * i, 20, 30)).save(img, "PNG")
            for ext, data in (("txt", f"a dog number {i}".encode()), ("png", img.getvalue())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


FULL = tar_bytes()


def end_of_data(data: bytes) -> int:
    """Byte offset of the first end-of-archive block."""
    offset = 0
    while data[offset : offset + 512] != bytes(512):
        size = int(data[offset + 124 : offset + 136].rstrip(b"\0 ") or b"0", 8)
        offset += 512 + -(-size // 512) * 512
    return offset


def caption_side(path: Path) -> tuple[int, str | None]:
    stats = ShardStats(0, str(path))
    source = CaptionSource(format="wds", paths=str(path))
    captions = sum(len(b.captions) for b in read_shard(source, Shard(0, str(path)), stats))
    assert captions == stats.captions
    return stats.records, stats.error


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1).contiguous()


def image_side(path: Path) -> tuple[int, str | None]:
    records, error = 0, None
    for item in ShardImages(str(path), ["png"], to_tensor, block_size=3):
        if item["end"]:
            error = item["error"]
        else:
            records += item["records"]
    return records, error


def check_cut(tmp_path: Path, cut: int) -> None:
    path = tmp_path / f"cut{cut}.tar"
    path.write_bytes(FULL[:cut])
    for side in (caption_side, image_side):
        records, error = side(path)
        if error is None:
            assert records == N_SAMPLES, f"{side.__name__}: cut at {cut} read as ok with {records} records"
        else:
            assert records < N_SAMPLES or cut >= end_of_data(FULL), (side.__name__, cut, error)


def test_uncut_tar_reads_whole(tmp_path):
    path = tmp_path / "full.tar"
    path.write_bytes(FULL)
    assert len(list(iter_tar_samples(str(path)))) == N_SAMPLES
    assert caption_side(path) == (N_SAMPLES, None) and image_side(path) == (N_SAMPLES, None)


def test_issue_example_cut_at_3000_bytes_fails(tmp_path):
    path = tmp_path / "cut.tar"
    path.write_bytes(FULL[:3000])
    for side in (caption_side, image_side):
        records, error = side(path)
        assert error and "truncated" in error and records < N_SAMPLES


def test_every_512_byte_boundary(tmp_path):
    """Cuts at headers, at data blocks and in the end-of-archive blocks (0 .. the full length)."""
    end = end_of_data(FULL)
    for cut in range(0, end + 1024 + 1, 512):
        check_cut(tmp_path, cut)
    # the two zero blocks are the end: one of them alone is a truncated tar
    path = tmp_path / "one_zero_block.tar"
    path.write_bytes(FULL[: end + 512])
    assert caption_side(path)[1] and "one zero block" in caption_side(path)[1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=len(FULL) - 1))
def test_any_cut_point(tmp_path, cut):
    check_cut(tmp_path, cut)


def test_damaged_header_is_an_error_not_an_end(tmp_path):
    data = bytearray(FULL)
    second = 512 + -(-int(FULL[124:136].rstrip(b"\0 "), 8) // 512) * 512
    data[second : second + 100] = b"x" * 100  # a garbled header mid-archive (bad checksum)
    path = tmp_path / "garbled.tar"
    path.write_bytes(bytes(data))
    records, error = caption_side(path)
    assert error and "invalid header" in error and records == 0


@pytest.mark.parametrize("n", [0, 1])
def test_small_complete_tars_are_ok(tmp_path, n):
    path = tmp_path / "small.tar"
    path.write_bytes(tar_bytes(n))
    assert caption_side(path) == (n, None)
    assert image_side(path) == (n, None)
