"""The input spec and class names inside the .tflite itself, as a TFLite metadata entry named
"kclassify" holding JSON (the schema's own Model.metadata field: no deprecated tflite-support
package). The kit reads it back with ai-edge-litert's schema, so a lone .tflite is enough."""
import json

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils


def embed_metadata(blob, spec, name="kclassify"):
    """`blob` (.tflite bytes) with `spec` (a JSON-able dict) stored as metadata `name`."""
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(spec).encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name not in (name, name.encode())] + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
