/* ZeroMQ CURVE key files for the pools (coordinator and workers): a key file is
 *   public Z85(40 chars)
 *   secret Z85(40 chars)       (written 0600; absent in a FILE.pub)
 * and an authorized-keys file one "NAME PUBLIC_Z85" or "PUBLIC_Z85" per line ('#'
 * comments). `mmctl keygen FILE` writes FILE and FILE.pub. */
#ifndef MM_CURVE_KEYS_H
#define MM_CURVE_KEYS_H

#include <stddef.h>

#include "common/status.h"

#define MM_Z85_KEY_LEN 40

/* A new key pair into path (0600) and path.pub. */
mm_status mm_curve_keygen(const char *path);
/* The public key (and, when secret != NULL, the secret one, which must then be there)
 * of a key file, as Z85 text [MM_Z85_KEY_LEN + 1]. */
mm_status mm_curve_key_read(const char *path, char *public_z85, char *secret_z85);
/* The public keys of an authorized-keys file: *keys = n x 32 bytes (binary, as the ZAP
 * request carries them); free(*keys). No key at all is an error. */
mm_status mm_curve_authorized_read(const char *path, unsigned char **keys, size_t *n);

#endif
