"""maps.npz round trip: every field of a recorded map survives, None included, with float16 precision."""

from __future__ import annotations

import numpy as np
import pytest

from bench.records import StorageError, maps_from_npz, maps_to_npz
from bench.sd.maps import MapRecord


def test_maps_round_trip_keeps_every_field(tmp_path):
    rng = np.random.default_rng(0)
    records = [
        MapRecord("gradsam", None, "last", 5, 800, 16, rng.random((4, 16, 16), dtype=np.float32) * 1e-9),
        MapRecord("gradsam", "up_blocks.3.attentions.2.transformer_blocks.0.attn2", None, 5, 800, 16,
                  rng.random((4, 16, 16), dtype=np.float32) * 130),
        MapRecord("noise_diff", None, None, 5, 800, 16, np.zeros((4, 16, 16), np.float32)),
    ]  # fmt: skip
    path = tmp_path / "maps.npz"
    path.write_bytes(maps_to_npz(records))
    back = maps_from_npz(path)
    for ours, theirs in zip(back, records, strict=True):
        assert (ours.kind, ours.layer, ours.layer_set, ours.index, ours.timestep, ours.side) == (
            theirs.kind, theirs.layer, theirs.layer_set, theirs.index, theirs.timestep, theirs.side
        )  # fmt: skip
        # float16 of map / max|map|: relative precision ~1e-3 whatever the map's scale
        np.testing.assert_allclose(ours.values, theirs.values, rtol=1e-3, atol=np.abs(theirs.values).max() * 1e-3)


def test_a_maps_file_of_an_older_version_is_named(tmp_path):
    path = tmp_path / "maps.npz"
    np.savez(path, maps=np.zeros((1, 4, 2, 2), np.float16), kind=np.array(["gradsam"]))
    with pytest.raises(StorageError, match="older version"):
        maps_from_npz(path)
