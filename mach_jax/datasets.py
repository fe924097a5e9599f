"""``python -m mach_jax.datasets``: list and download standard XC datasets; convert VW files.

    python -m mach_jax.datasets list
    python -m mach_jax.datasets download Bibtex --dir data     # -> data/Bibtex/{train,test}.txt
    python -m mach_jax.datasets convert-vw odp_train.vw odp/train.txt

``download`` fetches the registry's files (see `mach_jax.data.registry`), streamed into a ``.part``
file that a re-run resumes; unpacks zip, tar(.gz), .gz or plain files; writes ``train.txt`` and
``test.txt`` in XC format (for data + split-file layouts, the points named by split column
``--split``, 1-based row numbers); and checks every header's N, D, L against the registry and
each file's sha256 where the registry has one, else its md5 (Mediamill, Bibtex, Delicious,
EURLex-4K), else nothing. A checksum mismatch stops with an error and keeps the file;
``--accept-checksum-mismatch`` uses it anyway, with a warning, and ``.verified.json`` beside the
files records that. A dataset verified before is not fetched again. Lines are copied as they
are, except that trailing spaces and CRs are dropped and a point without labels gets its leading
space; ids are checked later by the strict reader (`read_xc`), as for any XC file. Files are
streamed, never read whole: a line over ``--max-line-bytes`` (64M) or an unpacked file over
``--max-member-bytes`` (64G) is refused as soon as it is met. Without a network, fetch the
files on another machine and pass them with ``--url FILE``; a failed download leaves no empty
folder behind.

``convert-vw`` turns a Vowpal Wabbit multiclass file (as used by the MACH paper for ODP and
ImageNet) into an XC file; see `mach_jax.data.vw_format`.
"""

from __future__ import annotations

import argparse

from mach_jax import cli
from mach_jax.config.flag_values import byte_count
from mach_jax.data.archives import Limits
from mach_jax.data.download import download
from mach_jax.data.registry import REGISTRY
from mach_jax.data.vw_format import convert_vw


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return int(text)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mach_jax.datasets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the registry's datasets and their statistics")
    get = commands.add_parser("download", help="fetch, unpack and verify one dataset")
    get.add_argument("name", help="dataset name from `list` (any case)")
    get.add_argument("--dir", default="data", help="it goes to DIR/NAME/ (default: %(default)s)")
    get.add_argument("--url", action="append", help="fetch from here instead: a mirror or an "
                     "already downloaded local file (repeat for several files)")
    get.add_argument("--split", type=int, default=1,
                     help="split column for data + split-file layouts (default: %(default)s)")
    get.add_argument("--keep-archive", action="store_true", help="keep the downloaded files")
    get.add_argument("--accept-checksum-mismatch", action="store_true",
                     help="use a file whose sha256/md5 does not match the registry's (warns)")
    get.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    get.add_argument("--max-line-bytes", type=byte_count, default=Limits().line, metavar="SIZE",
                     help="refuse a longer line (default: 64M)")
    get.add_argument("--max-member-bytes", type=byte_count, default=Limits().member,
                     metavar="SIZE", help="refuse a larger unpacked file (default: 64G)")
    vw = commands.add_parser("convert-vw", help="Vowpal Wabbit multiclass file -> XC file")
    vw.add_argument("input", help="VW file (plain or gzip)")
    vw.add_argument("output", help="XC file to write (.gz: compressed)")
    vw.add_argument("--num-features", type=_non_negative, help="D (default: largest id + 1)")
    vw.add_argument("--num-labels", type=_non_negative, help="L (default: largest label + 1)")
    vw.add_argument("--label-base", type=int, choices=(0, 1), default=1,
                    help="1: VW's 1-based class ids (default); 0: already 0-based")
    return parser.parse_args(argv)


def do_list(args: argparse.Namespace) -> int:
    print(f"{'name':<16}{'D':>11}{'L':>11}{'train':>11}{'test':>10}{'lbl/pt':>8}{'pt/lbl':>9}"
          "  layout")
    for e in REGISTRY.values():
        stats = [f"{x:.2f}" if x is not None else "-" for x in (e.labels_per_point,
                                                                 e.points_per_label)]
        layout = "data + split files" if e.layout.uses_splits else "train + test files"
        print(f"{e.name:<16}{e.num_features:>11,}{e.num_labels:>11,}{e.num_train:>11,}"
              f"{e.num_test:>10,}{stats[0]:>8}{stats[1]:>9}  {layout}")
    print("\nfetch one with: python -m mach_jax.datasets download NAME --dir DIR")
    return 0


def do_download(args: argparse.Namespace) -> int:
    out_dir = download(args.name, args.dir, urls=args.url, split=args.split,
                       progress=not args.quiet, keep_archive=args.keep_archive,
                       accept_checksum_mismatch=args.accept_checksum_mismatch,
                       limits=Limits(args.max_line_bytes, args.max_member_bytes))
    if not args.quiet:
        print(f"{out_dir / 'train.txt'}\n{out_dir / 'test.txt'}")
    return 0


def do_convert_vw(args: argparse.Namespace) -> int:
    n, d, l = convert_vw(args.input, args.output, num_features=args.num_features,
                         num_labels=args.num_labels, label_base=args.label_base)
    print(f"wrote {args.output}: {n} points, D={d}, L={l}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    command = {"list": do_list, "download": do_download, "convert-vw": do_convert_vw}
    return command[args.command](args)


if __name__ == "__main__":
    cli.run_cli(main)
