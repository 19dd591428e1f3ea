"""GLSL sources of the splat renderer (pad's own, small on purpose).

pyrender asks for shaders by file name (``mesh.vert``/``mesh.frag`` for lit meshes,
``flat.vert``/``flat.frag`` with ``RenderFlags.FLAT``); :func:`shader_sources` gives these
sources by those names to pad's program cache (:func:`pipeline.render.gl.program_cache`), which
writes a program's files into a temporary directory only while it compiles that program: no
shader file of pad's stays on disk, whatever stops the process. pyrender substitutes the ``*_LOC`` names and
resolves ``#ifdef`` lines before compiling, and sets the uniforms by name
(``V``, ``P``, ``M``, ``ambient_light``, ``directional_lights[i].*``,
``material.base_color_factor``).

Shading (``mesh.*``): two-sided Lambert, ``albedo · (ambient + Σ intensity·|n·l|)``,
clamped to [0, 1]. Taking ``|n·l|`` makes the image independent of the sign of
the normals, so a wrongly oriented normal cannot draw a black speckle. A splat
is flat and the lights are directional, so the shading is computed once per
vertex and passed ``flat`` to a pass-through fragment shader (the same image as
per-fragment lighting, at the fragment cost of a flat colour: llvmpipe spends
most of a view on fragments).
Flat (``flat.*``): the per-vertex colour as is (index-map tests, label images).

Points (``--style pointad``, :func:`point_shader_sources`): OpenGL points of a fixed size in
window pixels (``gl_PointSize``), each drawn in its vertex colour, at ``P · position`` where ``P``
is the whole float32 model-view-projection matrix of Open3D's legacy camera. The colours are
computed on the CPU (Open3D's Phong lighting, :mod:`pipeline.render.open3d_shading`) as exact
multiples of 1/255. :class:`pipeline.render.gl.PointRenderer` compiles them itself (not through
pyrender) and draws without multisampling, so a point covers whole pixels as in Open3D's
single-sampled buffer.
"""
from __future__ import annotations

_MESH_VERT = """#version 330 core
struct DirectionalLight {
    vec3 color;
    float intensity;
    vec3 direction;
};
struct Material {
    vec4 base_color_factor;
};

layout(location = 0) in vec3 position;
#ifdef NORMAL_LOC
layout(location = NORMAL_LOC) in vec3 normal;
#endif
#ifdef COLOR_0_LOC
layout(location = COLOR_0_LOC) in vec4 color_0;
#endif
layout(location = INST_M_LOC) in mat4 inst_m;

uniform mat4 M;
uniform mat4 V;
uniform mat4 P;
uniform Material material;
uniform vec3 ambient_light;
uniform int n_directional_lights;
uniform DirectionalLight directional_lights[MAX_DIRECTIONAL_LIGHTS];

flat out vec4 shade;

void main()
{
    vec4 world = M * (inst_m * vec4(position, 1.0));   // matrix-vector products only
    gl_Position = P * (V * world);
    vec3 light = ambient_light;
#ifdef NORMAL_LOC
    vec3 n = normalize(mat3(M) * (mat3(inst_m) * normal));
    for (int i = 0; i < n_directional_lights; i++) {
        float lambert = abs(dot(n, normalize(directional_lights[i].direction)));
        light += directional_lights[i].intensity * directional_lights[i].color * lambert;
    }
#endif
    vec4 albedo = material.base_color_factor;
#ifdef COLOR_0_LOC
    albedo *= color_0;
#endif
    shade = vec4(clamp(albedo.rgb * light, 0.0, 1.0), 1.0);
}
"""

_MESH_FRAG = """#version 330 core
flat in vec4 shade;
out vec4 frag_color;

void main()
{
    frag_color = shade;
}
"""

_FLAT_VERT = """#version 330 core
layout(location = 0) in vec3 position;
#ifdef COLOR_0_LOC
layout(location = COLOR_0_LOC) in vec4 color_0;
#endif
layout(location = INST_M_LOC) in mat4 inst_m;

uniform mat4 M;
uniform mat4 V;
uniform mat4 P;

flat out vec4 vertex_color;

void main()
{
    gl_Position = P * (V * (M * (inst_m * vec4(position, 1.0))));
#ifdef COLOR_0_LOC
    vertex_color = color_0;
#else
    vertex_color = vec4(1.0);
#endif
}
"""

_FLAT_FRAG = """#version 330 core
flat in vec4 vertex_color;
out vec4 frag_color;

void main()
{
    frag_color = vec4(vertex_color.rgb, 1.0);
}
"""

_POINT_VERT = """#version 330 core
layout(location = 0) in vec3 position;
layout(location = COLOR_0_LOC) in vec4 color_0;

uniform mat4 P;

flat out vec4 point_color;

void main()
{
    gl_Position = P * vec4(position, 1.0);
    gl_PointSize = POINT_SIZE;
    point_color = color_0;
}
"""

_POINT_FRAG = """#version 330 core
flat in vec4 point_color;
out vec4 frag_color;

void main()
{
    frag_color = vec4(point_color.rgb, 1.0);
}
"""

SOURCES = {"mesh.vert": _MESH_VERT, "mesh.frag": _MESH_FRAG,
           "flat.vert": _FLAT_VERT, "flat.frag": _FLAT_FRAG}

def shader_sources() -> dict[str, str]:
    """The splat shaders (:data:`SOURCES`), file name -> GLSL source."""
    return dict(SOURCES)


def point_shader_sources(point_size: float) -> dict[str, str]:
    """The point shaders drawing points ``point_size`` window pixels wide, file name -> source."""
    text = _POINT_VERT.replace("POINT_SIZE", repr(float(point_size)))
    return {"segmentation.vert": text, "segmentation.frag": _POINT_FRAG}
