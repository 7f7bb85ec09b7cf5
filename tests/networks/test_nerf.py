"""The NeRF of DreamFusion: encodings, cameras, and the volume renderer against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from kuosan.networks.nerf import (
    FrequencyEncoding,
    HashGridEncoding,
    NeRF,
    camera_rays,
    orbit_cameras,
    random_cameras,
    render,
    sphere_interval,
    view_direction,
)


class ConstantBall(NeRF):
    """Density ``c`` inside a ball of radius ``a`` (smoothed over a thin shell so normals exist), albedo ``rho``."""

    def __init__(self, c=2.0, a=0.5, rho=(0.8, 0.4, 0.2), shell=1e-3):
        super().__init__(background="fixed", background_colour=(0.0, 0.0, 0.0))
        self.c, self.a, self.rho, self.shell = c, a, torch.tensor(rho), shell

    def forward(self, mu):
        r = mu.norm(dim=-1)
        tau = self.c * torch.sigmoid((self.a - r) / self.shell)
        return tau, self.rho.expand(mu.shape[0], 3)


def test_frequency_encoding_is_nerfs_gamma():
    enc = FrequencyEncoding(3)
    x = torch.tensor([[0.25, -0.5, 1.0]])
    y = enc(x)
    assert y.shape == (1, 3 * 7) == (1, enc.out_dim)
    k = 2  # the third frequency, 4 pi
    torch.testing.assert_close(y[0, 3 + 3 * k : 3 + 3 * k + 3], torch.sin(4 * math.pi * x[0]))
    torch.testing.assert_close(y[0, :3], x[0])


def test_hash_grid_interpolates_its_table_trilinearly():
    enc = HashGridEncoding(levels=2, features=2, log2_size=12, base_resolution=4, max_resolution=32)
    with torch.no_grad():
        enc.tables.normal_()
    res = enc.resolutions[0]
    assert enc.resolutions == [4, 32] and (res + 1) ** 3 <= enc.size  # level 0 is indexed directly
    # at a grid vertex the level-0 feature is that vertex's table entry
    c = torch.tensor([1, 2, 3])
    x = (c.float() / res) * 2 - 1
    idx = c[0] + (res + 1) * (c[1] + (res + 1) * c[2])
    torch.testing.assert_close(enc(x[None])[0, :2], enc.tables[0, idx])
    # between two vertices along x the feature is linear
    x1 = ((c + torch.tensor([1, 0, 0])).float() / res) * 2 - 1
    mid = enc((x + x1)[None] / 2)[0, :2]
    idx1 = idx + 1
    torch.testing.assert_close(mid, (enc.tables[0, idx] + enc.tables[0, idx1]) / 2)
    # and differentiable in the position (normals need it)
    p = torch.rand(16, 3, requires_grad=True)
    enc(p * 2 - 1).sum().backward()
    assert p.grad.abs().sum() > 0


def test_orbit_cameras_look_at_the_centre():
    cams = orbit_cameras(torch.tensor([0.0, 90.0, 180.0, 45.0]), torch.tensor([0.0, 0.0, 30.0, 90.0]), 2.0, 50.0)
    torch.testing.assert_close(cams.origin[0], torch.tensor([0.0, 0.0, 2.0]))  # azimuth 0: on +z, the front
    torch.testing.assert_close(cams.origin[1], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    R = cams.rotation
    torch.testing.assert_close(R.transpose(1, 2) @ R, torch.eye(3).expand(4, 3, 3), atol=1e-6, rtol=0)
    forward = R[..., 2]
    torch.testing.assert_close(forward, -cams.origin / 2.0, atol=1e-6, rtol=0)
    assert (R[:3, 1, 1] > 0).all()  # up is up
    o, d = camera_rays(cams, 5, 5)
    # the centre pixel's ray passes through the origin
    centre = o[:, 2, 2] + 2.0 * d[:, 2, 2]
    torch.testing.assert_close(centre, torch.zeros(4, 3), atol=1e-5, rtol=0)
    # the top row looks up, the right column right (image y down)
    assert (d[0, 0, 2, 1] > 0) and (d[0, 2, 4, 0] > 0)
    # the corner ray's angle to the axis is the field of view's
    half = math.atan(math.tan(math.radians(25)) * (1 - 1 / 5))
    assert math.isclose(float(torch.acos(-d[0, 0, 2, 2])), half, rel_tol=1e-4)


def test_random_cameras_respect_their_ranges_and_refuse_impossible_ones():
    g = torch.Generator().manual_seed(0)
    cams = random_cameras(256, elevation=(10.0, 20.0), radius=(1.2, 1.4), fov=(30.0, 40.0), generator=g)
    r = cams.origin.norm(dim=-1)
    assert (r >= 1.2 - 1e-5).all() and (r <= 1.4 + 1e-5).all()
    assert cams.elevation.min() >= 10 and cams.elevation.max() <= 20
    assert torch.rad2deg(cams.fov).min() >= 30 - 1e-4 and torch.rad2deg(cams.fov).max() <= 40 + 1e-4
    for bad in (dict(elevation=(-100.0, 0.0)), dict(fov=(10.0, 200.0)), dict(radius=(2.0, 1.0)), dict(radius=(0, 1))):
        with pytest.raises(ValueError, match="impossible"):
            random_cameras(1, **bad)


def test_view_directions():
    assert view_direction(0.0, 10.0) == "front" and view_direction(180.0, 0.0) == "back"
    assert view_direction(-170.0, 0.0) == "back" and view_direction(90.0, 0.0) == "side"
    assert view_direction(-60.0, 0.0) == "side" and view_direction(0.0, 75.0) == "overhead"


def test_sphere_interval_is_the_chord():
    o = torch.tensor([[0.0, 0.3, 2.0], [0.0, 2.0, 2.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    near, far, hit = sphere_interval(o, d, 0.5)
    assert hit.tolist() == [True, False]
    chord = 2 * math.sqrt(0.25 - 0.09)
    assert math.isclose(float(far[0] - near[0]), chord, rel_tol=1e-6) and math.isclose(
        float(near[0]), 2 - chord / 2, rel_tol=1e-6
    )


def test_volume_rendering_of_a_constant_ball_has_the_closed_form_opacity():
    """A ray at distance b from the centre of a ball of density c and radius a crosses a chord of
    2 sqrt(a^2 - b^2): opacity 1 - exp(-c chord). Midpoint samples on equal bins give it exactly
    (up to the smoothed shell), and the colour is rho times the opacity on a black background."""
    ball = ConstantBall(c=2.0, a=0.5)
    cams = orbit_cameras(0.0, 0.0, 2.0, 40.0)
    out = render(ball, cams, 9, 9, n_samples=512, shading="albedo", normals_graph=False)
    _, d = camera_rays(cams, 9, 9)
    o = cams.origin[:, None, None, :]
    b = torch.linalg.cross(o.expand_as(d), d).norm(dim=-1)  # the ray's distance from the centre
    chord = 2 * (0.25 - b**2).clamp(min=0).sqrt()
    want = 1 - torch.exp(-2.0 * chord)
    torch.testing.assert_close(out["opacity"][0, 0], want[0], atol=1e-2, rtol=0)  # grazing rays: the shell
    torch.testing.assert_close(out["image"][0], ball.rho[:, None, None] * want[0], atol=1e-2, rtol=0)
    # the depth of the centre pixel: sum_i w_i s_i -> int s dP(first hit at s) over the chord [1.5, 2.5]
    c, L = 2.0, 1.0
    mean_s = (1 - math.exp(-c * L) * (1 + c * L)) / c  # int_0^L s c e^{-cs} ds
    want_depth = 1.5 * (1 - math.exp(-c * L)) + mean_s
    assert math.isclose(float(out["depth"][0, 0, 4, 4]), want_depth, rel_tol=2e-3)


def test_shading_uses_the_density_normals():
    """For a ball the normals are radial: at the centre pixel the surface faces the camera, so with
    the light at the camera the diffuse term is 1 (colour rho), the normal map points at the camera,
    and textureless renders are white where lambertian ones are rho."""
    ball = ConstantBall(c=200.0, a=0.5, shell=0.05)  # opaque within its smooth shell, where tau's gradient is radial
    cams = orbit_cameras(90.0, 0.0, 2.0, 40.0)  # on +x
    kw = dict(n_samples=256, normals_graph=False, ambient=0.1)
    lam = render(ball, cams, 9, 9, shading="lambertian", **kw)
    torch.testing.assert_close(lam["image"][0, :, 4, 4], ball.rho, atol=1e-2, rtol=0)
    normal = lam["normal"][0, :, 4, 4]
    torch.testing.assert_close(normal / normal.norm(), torch.tensor([1.0, 0.0, 0.0]), atol=1e-2, rtol=0)
    white = render(ball, cams, 9, 9, shading="textureless", **kw)
    torch.testing.assert_close(white["image"][0, :, 4, 4], torch.ones(3), atol=1e-2, rtol=0)
    # a light behind the ball leaves only the ambient part on the visible side
    dark = render(ball, cams, 9, 9, shading="lambertian", light=torch.tensor([[-5.0, 0.0, 0.0]]), **kw)
    torch.testing.assert_close(dark["image"][0, :, 4, 4], 0.1 * ball.rho, atol=1e-2, rtol=0)
    assert lam["orientation"].item() < 1e-2  # outward normals face the camera (grazing rays exit the shell)


def test_nerf_starts_as_a_blob_and_its_render_gradient_is_exact():
    torch.manual_seed(0)
    nerf = NeRF()
    tau, rho = nerf(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 1.5]]))
    assert tau[0] > 5 and tau[1] < 0.1 and tau[2] == 0 and ((rho > 0) & (rho < 1)).all()
    g = torch.Generator().manual_seed(0)
    # the gradient of a textureless render (no ambient, black background: the image is sum_i w_i
    # max(0, n_i . l_i)) equals its finite differences in float64; with the normals cut out of the
    # graph it is about twice as large here, so the check sees the path through n = -grad tau / |grad tau|
    field = NeRF(background="fixed", background_colour=(0.0, 0.0, 0.0), n_frequencies=3).double()
    cams, light = orbit_cameras(30.0, 20.0, 1.3, 50.0), torch.tensor([[1.0, 2.0, 0.5]])

    def total():
        kw = dict(n_samples=32, shading="textureless", ambient=0.0, light=light)
        return render(field, cams, 8, 8, **kw)["image"].sum()

    w = field.mlp[0].weight
    total().backward()
    for a, b in ((0, 0), (5, 3), (10, 7)):
        with torch.no_grad():
            w[a, b] += 1e-5
            up = total().item()
            w[a, b] -= 2e-5
            down = total().item()
            w[a, b] += 1e-5
        assert math.isclose(w.grad[a, b].item(), (up - down) / 2e-5, rel_tol=1e-4)
    for bad in (dict(encoding="voxels"), dict(background="sky"), dict(blob_radius=0.0)):
        with pytest.raises(ValueError):
            NeRF(**bad)
    with pytest.raises(ValueError, match="shading"):
        render(nerf, random_cameras(1, generator=g), 4, 4, shading="toon")
