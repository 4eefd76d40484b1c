/* Listening TCP sockets for the coordinator's HTTP endpoints (metrics, the OpenAI
 * door): we bind them ourselves, so a taken port is one clear error naming the config
 * key and the address, and hand the socket to libmicrohttpd. */
#ifndef MM_TCP_LISTEN_H
#define MM_TCP_LISTEN_H

#include <stdarg.h>

#include "status.h"

/* A listening socket (close-on-exec) on the first resolution of address ("host:port",
 * "[v6]:port", ":port" = every interface) that binds. key names the tunable in errors. */
mm_status mm_tcp_listen(const char *key, const char *address, int *fd_out);

/* The port the kernel gave the socket (differs from the asked one only for port 0);
 * -1 on error. */
int mm_tcp_bound_port(int fd);

/* libmicrohttpd's external logger (MHD_OPTION_EXTERNAL_LOGGER) for both endpoints: its
 * messages, newline dropped, as warnings prefixed with prefix (a const char *). */
void mm_mhd_log(void *prefix, const char *fmt, va_list ap);

#endif
