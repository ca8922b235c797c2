"""Export stage: a model as a standalone honeyd service script (paper §2.5)."""

from scriptgen.export.honeyd import HONEYD_ARGS, honeyd_conf_line, honeyd_script

__all__ = ["HONEYD_ARGS", "honeyd_conf_line", "honeyd_script"]
