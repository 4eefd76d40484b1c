# cmake -DIN=FILE -DOUT=FILE.c -DNAME=symbol -P embed_file.cmake: writes FILE's bytes as
# `const unsigned char NAME[]` and `const size_t NAME_len` (the coordinator embeds the
# descriptor set protoc writes, for gRPC server reflection).
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n_hex)
math(EXPR n "${n_hex} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT} "/* Generated from ${IN} by proto/embed_file.cmake. */\n#include <stddef.h>\n"
     "const unsigned char ${NAME}[] = {${bytes}};\nconst size_t ${NAME}_len = ${n};\n")
