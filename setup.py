"""Build hook: ship the top-level rules/ inside the package as cds/_rules (wheel and sdist).

rules/ stays at the top of the repository; a source checkout (and an editable install) reads
it there, an installed wheel reads the copy under cds/_rules (found with importlib.resources).
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

RULES = Path(__file__).resolve().parent / "rules"


class build_py_with_rules(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads rules/ in the checkout
            return
        target = Path(self.build_lib) / "cds" / "_rules"
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted(RULES.glob("*.yaml")):
            self.copy_file(str(source), str(target / source.name))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:
            target = Path(self.build_lib) / "cds" / "_rules"
            outputs += [str(target / p.name) for p in sorted(RULES.glob("*.yaml"))]
        return outputs


setup(cmdclass={"build_py": build_py_with_rules})
