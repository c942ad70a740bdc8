"""tools/check_structure.py (run by ``nox -s lint``) finds cycles through re-exports."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "check_structure.py"


def check(tmp_path: Path, files: dict[str, str]) -> str:
    """Run the tool on a made-up trio_smtpd package of ``files``; what it printed."""
    (tmp_path / "tools").mkdir()
    shutil.copy(TOOL, tmp_path / "tools")
    for name, text in files.items():
        path = tmp_path / "trio_smtpd" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    result = subprocess.run([sys.executable, str(tmp_path / "tools" / TOOL.name)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == (1 if result.stdout else 0), result
    return result.stdout


PACKAGE = {
    "__init__.py": "from ._a import A\nfrom ._b import B\nfrom .sub import C\n"
                   "__version__ = '1'\n",
    "sub/__init__.py": "from ._c import C\n",
    "sub/_c.py": "class C: pass\n",
}


def test_a_cycle_through_names_imported_from_the_package_is_reported(tmp_path: Path) -> None:
    # _a has B through the package's __init__, and _b imports _a: a cycle all the same.
    files = {**PACKAGE, "_a.py": "from . import B\nclass A: pass\n",
             "_b.py": "from ._a import A\nclass B: pass\n"}
    assert check(tmp_path, files) == (
        "import cycle: trio_smtpd._a -> trio_smtpd._b -> trio_smtpd._a\n")


def test_names_are_followed_through_a_subpackage(tmp_path: Path) -> None:
    files = {**PACKAGE, "_a.py": "from . import C\nclass A: pass\n",
             "_b.py": "class B: pass\n", "sub/_c.py": "from .. import A\nclass C: pass\n"}
    assert check(tmp_path, files) == (
        "import cycle: trio_smtpd._a -> trio_smtpd.sub._c -> trio_smtpd._a\n")


def test_no_cycle_no_report(tmp_path: Path) -> None:
    # __version__ is the package's own: no module is imported for it.
    files = {**PACKAGE, "_a.py": "from . import __version__\nclass A: pass\n",
             "_b.py": "from . import A, _a\nclass B: pass\n"}
    assert check(tmp_path, files) == ""
