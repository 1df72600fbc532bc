"""Print the README's "which tools open which profile" table, from the checks of ``tests/test_interop.py``.

    python tests/interop_table.py

Generates a one-plate tree (96 x 96 sites), converts it with every profile of ``rxrx2_zarr.PROFILES`` (32 x 32 inner
chunks), reads one site with each tool in a subprocess without rxrx2_zarr (and without pcodec, except in the
"zarr-python + pcodec" column), and prints a markdown table followed by each failure's exact error.
"""

from __future__ import annotations

from _interop import main  # tests/ is sys.path[0] when this file runs as a script

if __name__ == "__main__":
    main()
