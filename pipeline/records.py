"""One record = one `tf.train.Example`; encoding here, parsing in `pipeline.reader`.

The Beam workers encode records without importing TensorFlow (its import alone costs about 7 s
per worker process on 2 cores, more than the whole job on a small input). The `tf.train.Example`
message types are therefore declared here through protobuf's descriptor API with TensorFlow's
field numbers (tensorflow/core/example/{example,feature}.proto); the protobuf library does the
encoding and a test proves TensorFlow parses the bytes identically.
"""
from __future__ import annotations

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pipeline.schema import CHANNELS

_F = descriptor_pb2.FieldDescriptorProto


def _declare_example_messages():
    proto = descriptor_pb2.FileDescriptorProto(
        name="gender_classifier/tf_example.proto", package="tensorflow", syntax="proto3"
    )

    def message(name, fields, nested=()):
        msg = proto.message_type.add(name=name) if not nested else nested
        for number, field_name, ftype, label, type_name in fields:
            f = msg.field.add(name=field_name, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        return msg

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("BytesList", [(1, "value", _F.TYPE_BYTES, rep, None)])
    message("FloatList", [(1, "value", _F.TYPE_FLOAT, rep, None)])
    int64_list = message("Int64List", [(1, "value", _F.TYPE_INT64, rep, None)])
    int64_list.field[0].options.packed = True
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, name, type_name in (
        (1, "bytes_list", ".tensorflow.BytesList"),
        (2, "float_list", ".tensorflow.FloatList"),
        (3, "int64_list", ".tensorflow.Int64List"),
    ):
        feature.field.add(
            name=name, number=number, type=_F.TYPE_MESSAGE, label=opt, type_name=type_name, oneof_index=0
        )
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    features.field.add(
        name="feature", number=1, type=_F.TYPE_MESSAGE, label=rep, type_name=".tensorflow.Features.FeatureEntry"
    )
    example = proto.message_type.add(name="Example")
    example.field.add(name="features", number=1, type=_F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Features")

    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _declare_example_messages()


def encode_example(image: np.ndarray, label: int, age: int, path: str) -> bytes:
    """Serialize one preprocessed face (uint8 H×W×3 BGR) and its labels as a tf.train.Example."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != CHANNELS:
        raise ValueError(f"expected a uint8 H×W×{CHANNELS} image, got {image.dtype} {image.shape}")
    example = Example()
    feature = example.features.feature
    feature["image"].bytes_list.value.append(np.ascontiguousarray(image).tobytes())
    feature["height"].int64_list.value.append(int(image.shape[0]))
    feature["width"].int64_list.value.append(int(image.shape[1]))
    feature["channels"].int64_list.value.append(int(image.shape[2]))
    feature["label"].int64_list.value.append(int(label))
    feature["age"].int64_list.value.append(int(age))
    feature["path"].bytes_list.value.append(path.encode("utf-8"))
    # Deterministic serialization: map entries in a stable order, so reruns give identical bytes.
    return example.SerializeToString(deterministic=True)


def decode_example(data: bytes) -> dict:
    """Parse a record back to numpy without TensorFlow (for tests and tools)."""
    example = Example.FromString(data)
    f = example.features.feature
    h, w, c = (f[k].int64_list.value[0] for k in ("height", "width", "channels"))
    return {
        "image": np.frombuffer(f["image"].bytes_list.value[0], np.uint8).reshape(h, w, c),
        "label": f["label"].int64_list.value[0],
        "age": f["age"].int64_list.value[0],
        "path": f["path"].bytes_list.value[0].decode("utf-8"),
    }
