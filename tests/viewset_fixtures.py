"""Synthetic posed multi-view fixtures written in each source's exact on-disk format.

A textured analytic object (sphere + box, optional ground plane) in an object-centred,
+z-up world is ray-cast (numpy, pixel centres at integer coordinates, 3x3 supersampled
colour) at known OpenCV cameras (``w2c``, centre-convention ``K``). Each ``write_*``
function then expresses those cameras the way its format does -- written here from the
format's definition, independently of ``pipelines.camera_conventions`` -- so a reader that
gets a convention wrong (axes, row/column, NDC scale, the 0.5 px pixel offset) fails.
"""
from __future__ import annotations

import gzip
import json
import math
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

SPHERE_C, SPHERE_R = np.array([0.02, 0.03, 0.02]), 0.3
BOX_LO, BOX_HI = np.array([-0.45, 0.08, -0.3]), np.array([-0.12, 0.4, 0.02])
GROUND_Z, GROUND_RADIUS = -0.3, 1.1       # a textured disk under the object


def tex(P):
    """Smooth RGB texture of world points P [..., 3]."""
    return np.stack([0.5 + 0.35 * np.sin(4.5 * P[..., 0] + 2.5 * P[..., 2]),
                     0.5 + 0.35 * np.sin(4.0 * P[..., 1] - 2.0 * P[..., 2] + 1.0),
                     0.5 + 0.30 * np.cos(3.0 * P[..., 0] + 4.0 * P[..., 1])], -1)


def _trace(C, d, ground):
    """(t of first hit, is_object) for rays C + t d; t = inf where nothing is hit."""
    oc = C - SPHERE_C
    a, b, c = (d * d).sum(-1), 2 * (d @ oc), oc @ oc - SPHERE_R ** 2
    disc = b * b - 4 * a * c
    t_sp = np.where(disc >= 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
    t_sp = np.where(t_sp > 0, t_sp, np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (BOX_LO - C) / d, (BOX_HI - C) / d
        tn, tf = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
    t_bx = np.where((tn <= tf) & (tn > 0), tn, np.inf)
    t_obj = np.minimum(t_sp, t_bx)
    if ground:
        with np.errstate(divide="ignore", invalid="ignore"):
            t_gr = (GROUND_Z - C[2]) / d[..., 2]
        t_gr = np.where(np.isfinite(t_gr) & (t_gr > 0), t_gr, np.inf)
        with np.errstate(invalid="ignore"):
            Pg = C[:2] + np.where(np.isfinite(t_gr), t_gr, 0)[..., None] * d[..., :2]
        t_gr = np.where((Pg ** 2).sum(-1) <= GROUND_RADIUS ** 2, t_gr, np.inf)
    else:
        t_gr = np.full_like(t_obj, np.inf)
    return np.minimum(t_obj, t_gr), t_obj <= t_gr


def render(K, w2c, H, W, *, ground=True, bg=1.0, ss=3):
    """Ray-cast one view. Returns rgb float32 [3,H,W] (mean of ss x ss samples, ``bg`` where
    nothing is hit), alpha float32 [1,H,W] (object coverage fraction) and z-depth float32
    [1,H,W] of the pixel-centre ray (inf where nothing is hit)."""
    R, t = w2c[:3, :3], w2c[:3, 3]
    C = -R.T @ t
    off = (np.arange(ss) + 0.5) / ss - 0.5
    v, u = np.meshgrid(np.repeat(np.arange(H), ss) + np.tile(off, H),
                       np.repeat(np.arange(W), ss) + np.tile(off, W), indexing="ij")
    y = (v - K[1, 2]) / K[1, 1]
    dc = np.stack([(u - K[0, 2] - K[0, 1] * y) / K[0, 0], y, np.ones_like(u)], -1)
    d = dc @ R                                     # world direction with camera z = 1
    tt, obj = _trace(C, d, ground)
    hit = np.isfinite(tt)
    col = np.where(hit[..., None], tex(C + np.where(hit, tt, 0)[..., None] * d), bg)
    rgb = col.reshape(H, ss, W, ss, 3).mean((1, 3))
    alpha = (obj & hit).reshape(H, ss, W, ss).mean((1, 3))
    ctr = ss // 2
    z = tt.reshape(H, ss, W, ss)[:, ctr, :, ctr]
    return (rgb.transpose(2, 0, 1).astype(np.float32), alpha[None].astype(np.float32), z[None].astype(np.float32))


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """OpenCV w2c of a camera at ``eye`` looking at ``target``, image-up towards ``up``."""
    eye, target, up = (np.asarray(x, dtype=np.float64) for x in (eye, target, up))
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up); x /= np.linalg.norm(x)
    y = np.cross(z, x)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([x, y, z])
    w2c[:3, 3] = -w2c[:3, :3] @ eye
    return w2c


def orbit_cameras(n, H, W, *, radius=2.0, seed=0, az_step=14.0, elev=(22.0, 38.0)):
    """``n`` cameras on an arc around the object (centre convention K, off-centre principal
    points, per-view focal lengths). Returns (K [n,3,3], w2c [n,4,4]) float64."""
    g = np.random.default_rng(seed)
    Ks, w2cs = [], []
    for i in range(n):
        az, el = math.radians(10.0 + az_step * i), math.radians(g.uniform(*elev))
        eye = radius * np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
        w2cs.append(look_at(eye, g.normal(0, 0.03, 3)))
        f = min(H, W) * g.uniform(1.05, 1.2)
        Ks.append(np.array([[f, 0, (W - 1) / 2 + g.uniform(-2, 2)], [0, f * g.uniform(0.98, 1.02), (H - 1) / 2 + g.uniform(-2, 2)], [0, 0, 1]]))
    return np.stack(Ks), np.stack(w2cs)


def render_views(K, w2c, H, W, **kw):
    """Render every view: rgb [V,3,H,W], alpha [V,1,H,W], depth [V,1,H,W] (numpy float32)."""
    out = [render(K[i], w2c[i], H, W, **kw) for i in range(len(K))]
    return tuple(np.stack(x) for x in zip(*out))


def _u8(x):
    return np.clip(np.round(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def save_rgb(path, rgb, alpha=None, **kw):
    """Save [3,H,W] (+ alpha [1,H,W] as RGBA) in [0,1] as an 8-bit image (format from suffix)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    a = rgb if alpha is None else np.concatenate([rgb, alpha], 0)
    Image.fromarray(_u8(a.transpose(1, 2, 0))).save(path, **kw)


def save_gray(path, x):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_u8(x[0])).save(path)


def save_u16(path, a):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(a, dtype=np.uint16)).save(path)


# ------------------------------------------------------------------------------------- CO3D
def co3d_viewpoint(K, w2c, H, W, fmt):
    """A CO3D ``viewpoint`` dict (PyTorch3D NDC camera) of an OpenCV camera.

    PyTorch3D camera = diag(-1,-1,1) @ OpenCV camera, row-vector ``X @ R + T``; NDC +x left,
    +y up; corner pixel u_c = u + 0.5 maps to ``x_ndc = -(u_c - W/2) / sx`` with
    ``sx = sy = min(H,W)/2`` (isotropic) or ``W/2, H/2`` (norm_image_bounds)."""
    F = np.diag([-1.0, -1.0, 1.0])
    R = (F @ w2c[:3, :3]).T
    T = F @ w2c[:3, 3]
    sx, sy = (min(H, W) / 2, min(H, W) / 2) if fmt == "ndc_isotropic" else (W / 2, H / 2)
    ucx, ucy = K[0, 2] + 0.5, K[1, 2] + 0.5
    return {"R": R.tolist(), "T": T.tolist(), "focal_length": [K[0, 0] / sx, K[1, 1] / sy],
            "principal_point": [-(ucx - W / 2) / sx, -(ucy - H / 2) / sy], "intrinsics_format": fmt}


def write_co3d(root, category, sequences, *, subset="fewview_dev", splits=None):
    """Write a CO3Dv2 category. ``sequences``: {name: dict(K, w2c, rgb, alpha, depth, fmt,
    scale_adjustment)}; splits: {name: "train"|"test"}. Also writes set lists, eval batches,
    sequence annotations and category_to_subset_name_list.json."""
    root = Path(root)
    frames, seq_anns, set_lists = [], [], {"train": [], "val": [], "test": []}
    for seq, s in sequences.items():
        V, _, H, W = s["rgb"].shape
        sa = s.get("scale_adjustment", 1.0)
        for i in range(V):
            fn = 3 * i + 1                                    # frame_number != file number
            img = f"{category}/{seq}/images/frame{i + 1:06d}.jpg"
            save_rgb(root / img, s["rgb"][i], quality=98, subsampling=0)
            msk = f"{category}/{seq}/masks/frame{i + 1:06d}.png"
            save_gray(root / msk, s["alpha"][i])
            dep = f"{category}/{seq}/depths/frame{i + 1:06d}.jpg.geometric.png"
            z = s["depth"][i, 0].astype(np.float64) / sa
            save_u16(root / dep, np.where(np.isfinite(z), z, 0).astype(np.float16).view(np.uint16))
            dm = f"{category}/{seq}/depth_masks/frame{i + 1:06d}.png"
            (root / dm).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.isfinite(s["depth"][i, 0])).save(root / dm)
            frames.append({"sequence_name": seq, "frame_number": fn, "frame_timestamp": 0.1 * i,
                           "image": {"path": img, "size": [H, W]},
                           "depth": {"path": dep, "scale_adjustment": sa, "mask_path": dm},
                           "mask": {"path": msk, "mass": float(s["alpha"][i].sum())},
                           "viewpoint": co3d_viewpoint(s["K"][i], s["w2c"][i], H, W, s["fmt"]), "meta": {}})
            sp = (splits or {}).get(seq, "train")
            set_lists[sp].append([seq, fn, img])
        seq_anns.append({"sequence_name": seq, "category": category, "video": None,
                         "point_cloud": None, "viewpoint_quality_score": 1.0})
    cat = root / category
    for name, obj in (("frame_annotations.jgz", frames[::-1]), ("sequence_annotations.jgz", seq_anns)):
        with gzip.open(cat / name, "wt", encoding="utf-8") as f:
            json.dump(obj, f)
    (cat / "set_lists").mkdir(exist_ok=True)
    (cat / "set_lists" / f"set_lists_{subset}.json").write_text(json.dumps(set_lists))
    (cat / "eval_batches").mkdir(exist_ok=True)
    (cat / "eval_batches" / f"eval_batches_{subset}.json").write_text(
        json.dumps([[e, set_lists["test"][0]] for e in set_lists["test"][1:2]] if set_lists["test"] else []))
    (root / "category_to_subset_name_list.json").write_text(json.dumps({category: [subset]}))


# ------------------------------------------------------------------------ transforms.json
def write_transforms_json(d, K, w2c, rgb, alpha, depth, *, override_frame=1):
    """nerfstudio transforms.json: OpenGL c2w (``c2w_cv @ diag(1,-1,-1,1)``), corner-convention
    fl_x fl_y cx cy w h at the top level (from view 0), per-frame overrides where a view
    differs, mask_path PNGs and depth_file_path uint16 PNGs in millimetres."""
    d = Path(d)
    V, _, H, W = rgb.shape
    top = {"fl_x": K[0, 0, 0], "fl_y": K[0, 1, 1], "cx": K[0, 0, 2] + 0.5, "cy": K[0, 1, 2] + 0.5,
           "w": W, "h": H, "camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0}
    frames = []
    for i in range(V):
        c2w = np.linalg.inv(w2c[i]) @ np.diag([1.0, -1.0, -1.0, 1.0])
        fr = {"file_path": f"images/frame_{i:05d}.png", "transform_matrix": c2w.tolist(),
              "mask_path": f"masks/frame_{i:05d}.png", "depth_file_path": f"depth/frame_{i:05d}.png"}
        for k, v in (("fl_x", K[i, 0, 0]), ("fl_y", K[i, 1, 1]), ("cx", K[i, 0, 2] + 0.5), ("cy", K[i, 1, 2] + 0.5)):
            if v != top[k]:
                fr[k] = v
        save_rgb(d / fr["file_path"], rgb[i])
        save_gray(d / fr["mask_path"], alpha[i])
        z = depth[i, 0]
        save_u16(d / fr["depth_file_path"], np.where(np.isfinite(z), np.round(z * 1000.0), 0))
        frames.append(fr)
    (d / "transforms.json").write_text(json.dumps({**top, "frames": frames}, indent=1))


# ----------------------------------------------------------------------------------- COLMAP
def _qvec(R):
    """(qw, qx, qy, qz) of a rotation matrix (Shepperd's method; independent of the reader)."""
    tr = np.trace(R)
    w = math.sqrt(max(0.0, 1 + tr)) / 2
    x = math.copysign(math.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    return np.array([w, x, y, z])


def write_colmap(d, K, w2c, rgb, depth):
    """COLMAP workspace: images/, sparse/0/{cameras,images,points3D}.txt (PINHOLE, corner
    convention, quaternion w2c), stereo/depth_maps/<name>.geometric.bin (z-depth)."""
    d = Path(d)
    V, _, H, W = rgb.shape
    (d / "sparse" / "0").mkdir(parents=True, exist_ok=True)
    (d / "stereo" / "depth_maps").mkdir(parents=True, exist_ok=True)
    cams = ["# Camera list with one line of data per camera:"]
    ims = ["# Image list with two lines of data per image:"]
    for i in range(V):
        cams.append(f"{i + 1} PINHOLE {W} {H} " + " ".join(repr(float(x)) for x in (K[i, 0, 0], K[i, 1, 1], K[i, 0, 2] + 0.5, K[i, 1, 2] + 0.5)))
        q, t = _qvec(w2c[i, :3, :3]), w2c[i, :3, 3]
        name = f"view_{i:03d}.png"
        ims.append(f"{i + 1} {' '.join(repr(float(x)) for x in q)} {' '.join(repr(float(x)) for x in t)} {i + 1} {name}")
        ims.append("")
        save_rgb(d / "images" / name, rgb[i])
        z = np.where(np.isfinite(depth[i, 0]), depth[i, 0], 0).astype("<f4")
        with open(d / "stereo" / "depth_maps" / (name + ".geometric.bin"), "wb") as f:
            f.write(f"{W}&{H}&1&".encode())
            f.write(np.asfortranarray(z.T.reshape(W, H, 1)).tobytes(order="F"))
    (d / "sparse" / "0" / "cameras.txt").write_text("\n".join(cams) + "\n")
    (d / "sparse" / "0" / "images.txt").write_text("\n".join(ims) + "\n")
    (d / "sparse" / "0" / "points3D.txt").write_text("")


# ------------------------------------------------------------------------------ SyncDreamer
def blender_pose(eye):
    """Blender TRACK_TO camera (-Z to the origin, Y up, world +z up) as OpenCV w2c [3,4] via
    SyncDreamer's ``get_3x4_RT_matrix_from_blender``: R = R_bcam^T, t = -R t_bcam, then
    diag(1,-1,-1) on both."""
    eye = np.asarray(eye, dtype=np.float64)
    back = eye / np.linalg.norm(eye)                    # Blender camera +Z (it looks along -Z)
    right = np.cross(np.array([0.0, 0.0, 1.0]), back); right /= np.linalg.norm(right)
    upc = np.cross(back, right)
    R_world_from_bcam = np.stack([right, upc, back], 1)  # matrix_world rotation
    R = R_world_from_bcam.T
    t = -R @ eye
    F = np.diag([1.0, -1.0, -1.0])
    return np.concatenate([F @ R, (F @ t)[:, None]], 1)


def write_syncdreamer(root, uid, size=64, seed=0):
    """SyncDreamer training layout for one uid: target/<uid>/000..015.png (fixed ring, 30 deg,
    d=1.5, RGBA), input/<uid>/000..015.png + meta.pkl (random elevations in [-10, 40] deg),
    uid_set.pkl. Returns the generating (K centre, w2c) of target and input."""
    root = Path(root)
    s = size / 256.0
    Kc = np.array([[280.0 * s, 0, 128.0 * s - 0.5], [0, 280.0 * s, 128.0 * s - 0.5], [0, 0, 1]])
    g = np.random.default_rng(seed)
    az = 2 * np.pi * np.arange(16) / 16
    out = {}
    for kind, el in (("target", np.full(16, np.deg2rad(30.0))), ("input", np.deg2rad(g.uniform(-10, 40, 16)))):
        eyes = 1.5 * np.stack([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)], -1)
        poses = np.stack([blender_pose(e) for e in eyes])
        w2c = np.tile(np.eye(4), (16, 1, 1)); w2c[:, :3] = poses
        K = np.tile(Kc, (16, 1, 1))
        rgb, alpha, depth = render_views(K, w2c, size, size, ground=False, bg=0.0)
        for i in range(16):
            save_rgb(root / kind / uid / f"{i:03d}.png", rgb[i], alpha[i])
        if kind == "input":
            Kb = np.array([[280.0, 0, 128.0], [0, 280.0, 128.0], [0, 0, 1]], np.float32)
            with open(root / kind / uid / "meta.pkl", "wb") as f:
                pickle.dump([Kb, az.astype(np.float32), el.astype(np.float32), np.full(16, 1.5), poses], f)
        out[kind] = dict(K=K, w2c=w2c, rgb=rgb, alpha=alpha, depth=depth)
    with open(root / "uid_set.pkl", "wb") as f:
        pickle.dump([uid], f)
    return out


def write_gso(d, target):
    """GSO eval folder from a rendered ring: NNN.png RGBA + NNN-depth.png linear 0.6-2.4."""
    d = Path(d)
    for i in range(len(target["rgb"])):
        save_rgb(d / f"{i:03d}.png", target["rgb"][i], target["alpha"][i])
        z = target["depth"][i, 0].astype(np.float64)
        v = np.where(np.isfinite(z), np.round((np.clip(z, 0.6, 2.4) - 0.6) / 1.8 * 65535), 65535)
        save_u16(d / f"{i:03d}-depth.png", v)


# -------------------------------------------------------------------------------------- SRN
def write_srn(d, n=8, size=64, seed=0):
    """SRN object dir: rgb/NNNNNN.png (white background), pose/NNNNNN.txt (OpenCV c2w, 16
    floats), intrinsics.txt at 128 px (f=131.25, c=64 corner), images at ``size`` px."""
    d = Path(d)
    g = np.random.default_rng(seed)
    Ks, w2cs = [], []
    s = size / 128.0
    for i in range(n):
        az, el = math.radians(20.0 + 15.0 * i), math.radians(g.uniform(15, 45))
        eye = 1.3 * np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
        w2cs.append(look_at(eye))
        Ks.append(np.array([[131.25 * s, 0, 64 * s - 0.5], [0, 131.25 * s, 64 * s - 0.5], [0, 0, 1]]))
    K, w2c = np.stack(Ks), np.stack(w2cs)
    rgb, alpha, depth = render_views(K, w2c, size, size, ground=False, bg=1.0)
    (d / "pose").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        save_rgb(d / "rgb" / f"{i:06d}.png", rgb[i])
        (d / "pose" / f"{i:06d}.txt").write_text(" ".join(repr(float(x)) for x in np.linalg.inv(w2c[i]).reshape(-1)))
    (d / "intrinsics.txt").write_text("131.250000 64.000000 64.000000 0.\n0. 0. 0.\n1.\n128 128\n")
    return dict(K=K, w2c=w2c, rgb=rgb, alpha=alpha, depth=depth)
