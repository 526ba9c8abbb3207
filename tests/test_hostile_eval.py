"""Hostile input to evaluation and the network tools: eval_recall.py (model and features mode),
gen_prototxt.py, model_stats.py, init_weights.py and the plot tools. Each case runs the entry
point as a user would (real Caffe, real files saved by Caffe) and asserts its exit status, one
line on stderr naming the problem, no traceback or Caffe abort, and that nothing was changed,
lost or left behind. Tiny nets: ABE-2^16 at 32x32 crops."""
import pickle

import numpy as np
import pytest
from google.protobuf import text_format

from hostile import (assert_one_line_error, assert_same_tree, file_size_limit, read_only,
                     run_entry, tree_digest)

TINY = dict(M=2, embed_dim=16, crop=32, batch=4)
TINY_FLAGS = ["--M", "2", "--embed-dim", "16", "--crop", "32", "--batch", "4"]


def write_net(path, net_param):
    path.write_text(text_format.MessageToString(net_param))
    return path


def save_weights(caffe, net_path, out):
    caffe.Net(str(net_path), caffe.TEST).save(str(out))


def edited(deploy_text, old, new):
    assert old in deploy_text
    return deploy_text.replace(old, new, 1)


@pytest.fixture(scope="module")
def world(caffe, tmp_path_factory):
    """Every input file of the cases, good and bad, in one folder."""
    from abe.data.lmdb_store import LmdbWriter, make_datum
    from abe.eval import embeddings
    from abe.net import netgen

    root = tmp_path_factory.mktemp("hostile_eval")
    netgen.write_config(root / "net", netgen.NetConfig(**TINY), netgen.SolverConfig())
    deploy = root / "net" / "deploy.prototxt"
    save_weights(caffe, deploy, root / "model.caffemodel")
    wide = write_net(root / "wide.prototxt", netgen.deploy_net(
        netgen.NetConfig(**dict(TINY, embed_dim=32))))
    save_weights(caffe, wide, root / "wide.caffemodel")  # embed_fc 16 x 1024, not 8 x 1024
    stem = netgen.deploy_net(netgen.NetConfig(**TINY))
    del stem.layer[12:]  # Input, conv1 .. pool2: the first layers only
    save_weights(caffe, write_net(root / "stem.prototxt", stem), root / "first_layers.caffemodel")
    model = (root / "model.caffemodel").read_bytes()
    (root / "truncated.caffemodel").write_bytes(model[:len(model) // 2])
    (root / "empty.caffemodel").write_bytes(b"")
    write_net(root / "crop64.prototxt", netgen.deploy_net(netgen.NetConfig(**dict(TINY, crop=64))))

    text = deploy.read_text()
    l2 = 'layer: "L2Normalize"'
    bad_nets = {
        "not_json": edited(text, l2, l2 + '\n    param_str: "{eps: 1e-10"'),
        "unknown_key": edited(text, l2, l2 + '\n    param_str: "{\\"epsilon\\": 1}"'),
        "wrong_type": edited(text, l2, l2 + '\n    param_str: "{\\"eps\\": \\"small\\"}"'),
        "no_module": edited(text, 'module: "abe.net.layers"', 'module: "abe.net.missing"'),
        "unknown_type": edited(text, 'type: "LRN"', 'type: "LocalResponse"'),
        "no_bottom": edited(text, 'bottom: "pool1/norm1"', 'bottom: "pool1/norm"'),
        "syntax": text[:len(text) // 3],
    }
    for name, content in bad_nets.items():
        (root / f"{name}.prototxt").write_text(content)

    rng = np.random.default_rng(0)
    lmdb = LmdbWriter(root / "test_lmdb")
    for i in range(12):
        image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        lmdb.append(make_datum(image, i % 3), f"{i}.png", i % 3, i % 3)
    lmdb.commit()
    (root / "not_lmdb").mkdir()
    (root / "not_lmdb" / "data.mdb").write_bytes(b"not an LMDB" * 100)

    features, labels = rng.standard_normal((12, 16)), np.arange(12) % 3
    learners = [features[:, :8], features[:, 8:]]
    embeddings.save(root / "good.npz", features, labels, learners)
    good = (root / "good.npz").read_bytes()
    (root / "truncated.npz").write_bytes(good[:len(good) // 2])
    np.save(root / "features.npy", features)
    (root / "pickled.npz").write_bytes(pickle.dumps({"features": features, "labels": labels}))
    (root / "notes.npz").write_text("features and labels\n")
    np.savez(root / "no_labels.npz", features=features)
    np.savez(root / "short_labels.npz", features=features, labels=labels[:-1])
    np.savez(root / "float_labels.npz", features=features, labels=labels + 0.5)
    nan_learner = learners[1].copy()
    nan_learner[5, 3] = np.nan
    np.savez(root / "nan_learner.npz", features=features, labels=labels, learner0=learners[0],
             learner1=nan_learner)
    np.savez(root / "huge.npz", features=features * 1e30, labels=labels)
    np.savez(root / "inf.npz", features=np.where(features > 2, np.inf, features), labels=labels)
    np.savez(root / "one_row.npz", features=features[:1], labels=labels[:1])
    np.savez(root / "singletons.npz", features=features, labels=np.arange(12))
    np.savez(root / "objects.npz", features=np.array([None] * 12, dtype=object), labels=labels)
    np.savez(root / "one_learner.npz", features=features, labels=labels, learner0=learners[0])

    (root / "run").mkdir()
    (root / "run" / "history.csv").write_text("iteration,total_loss\n0,1.5\n10,oops\n")
    return root


def resolve(root, args):
    """'@name' in a case's arguments is the file ``name`` of the world folder."""
    return [root / arg[1:] if isinstance(arg, str) and arg.startswith("@") else arg
            for arg in args]


def check_case(world, args, status, fragments):
    before = tree_digest(world)
    proc = run_entry(resolve(world, args), cwd=world)
    assert_one_line_error(proc, status, *fragments)
    assert_same_tree(before, world)


MODEL = ["tools/eval_recall.py", "--deploy", "@net/deploy.prototxt", "--test-lmdb",
         "@test_lmdb", "--save-features", "@saved.npz"]
EVAL_MODEL_CASES = {
    "empty weights": (["--weights", "@empty.caffemodel"], ["empty", "0 bytes"]),
    "truncated weights": (["--weights", "@truncated.caffemodel"], ["not a readable"]),
    "first layers only": (["--weights", "@first_layers.caffemodel"],
                          ["lacks layer 'inception_3a/3x3_reduce'", "deploy.prototxt"]),
    "wrong shapes": (["--weights", "@wide.caffemodel"], ["'embed_fc'", "(16, 1024)", "(8, 1024)"]),
    "param_str not JSON": (["--deploy", "@not_json.prototxt", "--weights", "@model.caffemodel"],
                           ["not_json.prototxt", "'embed_fc/normalized'", "not JSON"]),
    "GPU on a CPU-only build": (["--weights", "@model.caffemodel", "--gpu", "0"], ["CPU-only"]),
    "crop larger than the images": (["--deploy", "@crop64.prototxt", "--weights",
                                     "@model.caffemodel"], ["crop 64", "40x40"]),
    "features into a missing folder": (["--weights", "@model.caffemodel", "--save-features",
                                        "@nowhere/f.npz"], ["nowhere"]),
}


@pytest.mark.parametrize("case", sorted(EVAL_MODEL_CASES))
def test_eval_recall_model_mode(world, case):
    args, fragments = EVAL_MODEL_CASES[case]
    check_case(world, MODEL + args, 2, fragments)


CHECK_CASES = {
    "unknown_type": ("'pool1/norm1'", "unknown type 'LocalResponse'"),
    "unknown_key": ("'embed_fc/normalized'", "unknown param_str keys ['epsilon']"),
    "wrong_type": ("'embed_fc/normalized'", "'eps' must be a finite number"),
    "no_module": ("'embed_fc/normalized'", "cannot import Python module 'abe.net.missing'"),
    "no_bottom": ("'conv2/3x3_reduce'", "reads bottom 'pool1/norm'"),
    "syntax": ("syntax.prototxt", "not a Caffe net prototxt"),
}


@pytest.mark.parametrize("name", sorted(CHECK_CASES))
def test_check_prototxt_names_the_file_and_the_layer(world, name):
    from abe.errors import UserError
    from abe.net import checks

    with pytest.raises(UserError) as error:
        checks.check_prototxt(world / f"{name}.prototxt")
    message = str(error.value)
    assert "\n" not in message and f"{name}.prototxt" in message
    assert all(fragment in message for fragment in CHECK_CASES[name]), message


@pytest.mark.parametrize("weights, words", [("net/solver.prototxt", "not a readable"),
                                            ("net", "cannot read"),
                                            ("model.caffemodel", None)])
def test_check_weights_of_the_deploy_net(caffe, world, weights, words):
    from abe.errors import UserError
    from abe.net import checks

    deploy = world / "net" / "deploy.prototxt"
    net = caffe.Net(str(deploy), caffe.TEST)
    if words is None:
        checks.load_weights(net, world / weights, deploy)  # the real model fits
        saved = caffe.Net(str(deploy), str(world / weights), caffe.TEST)
        assert np.array_equal(net.params["embed_fc"][0].data, saved.params["embed_fc"][0].data)
        return
    with pytest.raises(UserError, match=words):
        checks.check_weights(net, world / weights, deploy)


def test_test_sets_are_checked_before_anything_is_embedded(world):
    from abe.errors import UserError
    from abe.eval import evaluation

    evaluation.check_test_set([world / "test_lmdb"], [1, 11])
    with pytest.raises(UserError, match="K=12 is larger than the gallery"):
        evaluation.check_test_set([world / "test_lmdb"], [1, 12])
    with pytest.raises(UserError, match="K=13 is larger than the gallery .12 items"):
        evaluation.check_test_set([world / "test_lmdb", world / "test_lmdb"], [13])
    for folder, words in (("not_lmdb", "not a readable LMDB"), ("net", "no LMDB")):
        with pytest.raises((UserError, FileNotFoundError), match=words):
            evaluation.check_test_set([world / folder], [1])
    evaluation.check_crop(world / "test_lmdb", 40)
    with pytest.raises(UserError, match="crop 41"):
        evaluation.check_crop(world / "test_lmdb", 41)


EVAL_FEATURES_CASES = {
    "truncated npz": ("@truncated.npz", [], ["truncated or damaged"]),
    "npy given": ("@features.npy", [], ["single .npy array"]),
    "pickle": ("@pickled.npz", [], ["not an .npz"]),
    "text file": ("@notes.npz", [], ["not an .npz"]),
    "object array": ("@objects.npz", [], ["Python objects"]),
    "no labels": ("@no_labels.npz", [], ["no array 'labels'"]),
    "labels shorter than features": ("@short_labels.npz", [], ["12 integers", "(11,)"]),
    "float labels": ("@float_labels.npz", [], ["integers", "float64"]),
    "NaN in a learner": ("@nan_learner.npz", [], ["'learner1'", "row 5", "NaN"]),
    "inf features": ("@inf.npz", [], ["'features'", "NaN or inf"]),
    "features around 1e30": ("@huge.npz", [], ["too large"]),
    "one row": ("@one_row.npz", [], ["gallery is empty"]),
    "singletons at K = N": ("@singletons.npz", ["--ks", "1", "12"], ["K=12", "up to 11"]),
    "default SOP Ks on 12 items": ("@good.npz", ["--dataset", "sop"], ["K=1000"]),
    "missing file": ("@absent.npz", [], ["does not exist"]),
    "folder": ("@net", [], ["cannot read"]),
}


@pytest.mark.parametrize("case", sorted(EVAL_FEATURES_CASES))
def test_eval_recall_features_mode(world, case):
    features, extra, fragments = EVAL_FEATURES_CASES[case]
    check_case(world, ["tools/eval_recall.py", "--features", features] + extra, 2, fragments)


def test_eval_recall_singletons_are_misses_up_to_the_gallery(world):
    proc = run_entry(["tools/eval_recall.py", "--features", world / "singletons.npz", "--ks",
                      "1", "11", "--json"])
    assert proc.returncode == 0, proc.stderr
    assert '"recall": {"1": 0.0, "11": 0.0}' in proc.stdout


GEN_CASES = {
    "base-lr nan": ["--base-lr", "nan"],
    "lambda-div inf": ["--lambda-div", "inf"],
    "gamma -1": ["--gamma", "-1"],
    "weight-decay -1": ["--weight-decay", "-1"],
}


@pytest.mark.parametrize("case", sorted(GEN_CASES))
def test_gen_prototxt_numeric_options(tmp_path, case):
    proc = run_entry(["tools/gen_prototxt.py"] + TINY_FLAGS + ["--out", tmp_path / "out"]
                     + GEN_CASES[case])
    assert_one_line_error(proc, 2, GEN_CASES[case][0].lstrip("-"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config, option, value", [
    (config, option, value)
    for config, options in {
        "net": {"lambda_div": [float("nan"), float("inf"), -1.0],
                "lr_mult_new": [float("nan"), float("inf"), 0.0],
                "M": [0, 2 ** 31], "embed_dim": [0, 15], "att_depth": [0, 8],
                "batch": [0, 5, 2 ** 40], "crop": [0, 48, 2 ** 40],
                "contrastive_margin": [0.0, float("nan")], "divergence_margin": [-1.0]},
        "solver": {"base_lr": [float("nan"), float("inf"), 0.0, -1e-4],
                   "gamma": [float("nan"), -1.0, 0.0, 2.0],
                   "weight_decay": [float("nan"), float("inf"), -1.0],
                   "momentum": [-0.1, 1.0, float("nan")],
                   "max_iter": [0, -5, 2 ** 31], "stepsize": [0, 2 ** 31],
                   "iter_size": [0, -1], "snapshot": [-1, 2 ** 31]},
    }.items()
    for option, values in options.items() for value in values])
def test_every_numeric_option_is_finite_and_in_range(config, option, value):
    from abe.errors import UserError
    from abe.net import netgen

    make = {"net": lambda **kw: netgen.NetConfig(**{**TINY, **kw}), "solver": netgen.SolverConfig}
    make[config]()  # the defaults are valid
    with pytest.raises(UserError, match=option.replace("_", "[-_ ]").split("[")[0]):
        make[config](**{option: value})


def gen_into(out, *extra, **run):
    return run_entry(["tools/gen_prototxt.py"] + TINY_FLAGS + ["--out", out, *extra], **run)


@pytest.fixture
def previous(tmp_path):
    """A folder holding a previous generation (base_lr 0.5)."""
    from abe.net import netgen

    out = tmp_path / "out"
    netgen.write_config(out, netgen.NetConfig(**TINY), netgen.SolverConfig(base_lr=0.5))
    return out


def test_gen_prototxt_read_only_out_keeps_the_previous_files(previous):
    before = tree_digest(previous)
    with read_only(previous):
        proc = gen_into(previous, "--force")
    assert_one_line_error(proc, 2, str(previous))
    assert_same_tree(before, previous)


def test_gen_prototxt_read_only_parent_writes_nothing(tmp_path):
    with read_only(tmp_path):
        proc = gen_into(tmp_path / "out")
    assert_one_line_error(proc, 2, "out")
    assert list(tmp_path.iterdir()) == []


def test_gen_prototxt_full_disk_leaves_no_file_of_the_three(tmp_path, previous):
    before = tree_digest(previous)
    # the nets (~60 KB each) do not fit under the limit; solver.prototxt (~0.4 KB) would
    proc = gen_into(previous, "--force", preexec_fn=file_size_limit(20_000))
    assert_one_line_error(proc, 1, str(previous))
    assert_same_tree(before, previous)
    proc = gen_into(tmp_path / "fresh", preexec_fn=file_size_limit(20_000))
    assert_one_line_error(proc, 1, "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_gen_prototxt_out_is_a_file(tmp_path):
    (tmp_path / "out").write_text("mine")
    assert_one_line_error(gen_into(tmp_path / "out"), 2, "not an empty directory")
    assert (tmp_path / "out").read_text() == "mine"


MODEL_STATS_CASES = {
    "param_str not JSON": (["@not_json.prototxt"], ["'embed_fc/normalized'", "not JSON"]),
    "train net, after a good one": (["@net/deploy.prototxt", "@net/train.prototxt"],
                                    ["train.prototxt", "no Input layer"]),
}


@pytest.mark.parametrize("case", sorted(MODEL_STATS_CASES))
def test_model_stats(world, case):
    args, fragments = MODEL_STATS_CASES[case]
    check_case(world, ["tools/model_stats.py"] + args, 2, fragments)


INIT = ["tools/init_weights.py", "--net", "@net/train.prototxt", "--out", "@init.caffemodel"]
INIT_CASES = {
    "empty pretrained": (["--weights", "@empty.caffemodel"], ["no layer with weights"]),
    "pretrained with the first layers only": (["--weights", "@first_layers.caffemodel"],
                                              ["no weights for layer 'inception_3a/3x3_reduce'"]),
    "param_str not JSON": (["--weights", "@model.caffemodel", "--net", "@not_json.prototxt"],
                           ["not_json.prototxt", "not JSON"]),
}


@pytest.mark.parametrize("case", sorted(INIT_CASES))
def test_init_weights(world, case):
    args, fragments = INIT_CASES[case]
    check_case(world, INIT + args, 2, fragments)


def test_init_weights_read_only_out(world, tmp_path):
    with read_only(tmp_path):
        proc = run_entry(resolve(world, INIT[:3] + ["--weights", "@model.caffemodel", "--out",
                                                    tmp_path / "init.caffemodel"]))
    assert_one_line_error(proc, 2, str(tmp_path))
    assert list(tmp_path.iterdir()) == []


PLOT_CASES = {
    "curves: no run folder": (["tools/plot_curves.py", "@absent"], ["does not exist"]),
    "curves: text in a number column": (["tools/plot_curves.py", "@run"], ["oops"]),
    "self pairs: npy": (["tools/plot_self_pairs.py", "--features", "@features.npy", "--out",
                         "@p.png"], ["single .npy"]),
    "self pairs: one learner": (["tools/plot_self_pairs.py", "--features", "@one_learner.npz",
                                 "--out", "@p.png"], ["fewer than two learners"]),
    "attention: first layers only": (["tools/plot_attention.py", "--deploy",
                                      "@net/deploy.prototxt", "--weights",
                                      "@first_layers.caffemodel", "--test-lmdb", "@test_lmdb",
                                      "--out", "@a.png"], ["lacks layer"]),
    "attention: no images": (["tools/plot_attention.py", "--deploy", "@net/deploy.prototxt",
                              "--weights", "@model.caffemodel", "--test-lmdb", "@test_lmdb",
                              "--images", "0", "--out", "@a.png"], ["--images"]),
}


@pytest.mark.parametrize("case", sorted(PLOT_CASES))
def test_plot_tools(world, case):
    args, fragments = PLOT_CASES[case]
    check_case(world, args, 2, fragments)
