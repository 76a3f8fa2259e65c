"""What FastReID's registries hold, read where FastReID offers no public way: the names
registered, and the backbone depths its builders accept (read from their source)."""
import ast
import functools
import inspect
import textwrap

from fastreid.modeling.backbones import BACKBONE_REGISTRY

__all__ = ["registry_names", "backbone_depths", "BACKBONE_DEPTHS"]

# MODEL.BACKBONE.DEPTH of the FastReID builders that do not look it up in a dict literal (the
# others' values are read from their source by `backbone_depths`).
BACKBONE_DEPTHS = {
    "build_shufflenetv2_backbone": ("0.5x", "1.0x", "1.5x", "2.0x"),  # ShuffleNetV2.__init__
    "build_mobilenetv3_backbone": ("Large", "Small"),  # _mobilenet_v3_conf
}


def registry_names(registry):
    """The names registered in a FastReID Registry (it has no public listing in 1.4)."""
    return sorted(registry._obj_map)


@functools.lru_cache(maxsize=None)
def backbone_depths(name):
    """The MODEL.BACKBONE.DEPTH values the registered backbone builder `name` accepts, or None
    when it does not read that key (build_openclip_backbone) or its values cannot be told.

    FastReID's builders look the depth up in dict literals inside the function
    (``{"18x": [2, 2, 2, 2], ...}[depth]``), where no other code can import them; they accept the
    keys present in every such dict (build_resnext_backbone's second dict lacks "152x"), read here
    from the builder's source. BACKBONE_DEPTHS lists the builders that use no dict literal.
    """
    if name in BACKBONE_DEPTHS:
        return BACKBONE_DEPTHS[name]
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(BACKBONE_REGISTRY.get(name))))
    except (KeyError, OSError, TypeError, SyntaxError):
        return None
    assigned = {target.id: node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    depth = {var for var, value in assigned.items()
             if ast.unparse(value) == "cfg.MODEL.BACKBONE.DEPTH"}
    # `{...}[depth]`, or `table[depth]` with `table = {...}` (build_repvgg_backbone's func_dict).
    looked_up = [assigned.get(node.value.id) if isinstance(node.value, ast.Name) else node.value
                 for node in ast.walk(tree) if isinstance(node, ast.Subscript)
                 and isinstance(node.slice, ast.Name) and node.slice.id in depth]
    tables = [[k.value for k in table.keys if isinstance(k, ast.Constant)]
              for table in looked_up if isinstance(table, ast.Dict)]
    if not tables:
        return None
    return tuple(k for k in tables[0] if all(k in t for t in tables[1:]))
