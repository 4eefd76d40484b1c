/* gRPC server reflection (grpc.reflection.v1 and v1alpha ServerReflectionInfo) for the
 * coordinator's gRPC door, so that grpcurl, Postman and reflection clients call the
 * service without its .proto files. Answers from the FileDescriptorSet protoc writes at
 * build time (metamorph, health and reflection protos, --include_imports), embedded in
 * the binary. Pure: one request's bytes in, the response's bytes out; it knows nothing
 * of calls or streams (grpc_server.c drives the bidirectional stream). */
#ifndef MM_GRPC_REFLECTION_H
#define MM_GRPC_REFLECTION_H

#include <stddef.h>
#include <stdint.h>

/* The serialized ServerReflectionResponse to one serialized ServerReflectionRequest
 * (*resp malloc'd). A request about an unknown file or symbol gets an ErrorResponse
 * (NOT_FOUND) in the response, as the specification asks. Returns 0, or -1 when the
 * request cannot be decoded or memory runs out (the call then fails). */
int mm_reflection_answer(const uint8_t *req, size_t len, uint8_t **resp, size_t *resp_len);

/* The embedded descriptor set (proto_gen/descriptor_set.c in mm_proto, generated at build time). */
extern const unsigned char mm_descriptor_set[];
extern const size_t mm_descriptor_set_len;

#endif
