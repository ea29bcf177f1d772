"""Deprecated: the commands' shared pieces moved.

``add_model_arguments``, ``build_segmenter`` and ``check_device`` are
:mod:`segmentation.commands._common`; ``read_class_list`` is :mod:`segmentation.classnames`; the
methods are :mod:`segmentation.methods` (``METHODS``: the names of the registered ones).
"""

from ._deprecated import alias_getattr

_getattr = alias_getattr(__name__, {
    "add_model_arguments": "segmentation.commands._common:add_model_arguments",
    "build_segmenter": "segmentation.commands._common:build_segmenter",
    "check_device": "segmentation.commands._common:check_device",
    "read_class_list": "segmentation.classnames:read_class_list",
})


def __getattr__(name: str) -> object:
    if name == "METHODS":
        import warnings

        from .methods import available_methods

        warnings.warn(f"{__name__}.METHODS is deprecated; use segmentation.methods.available_methods()",
                      DeprecationWarning, stacklevel=2)
        return tuple(m.name for m in available_methods())
    return _getattr(name)
