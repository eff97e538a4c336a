/*
 * Baseline server for scripts/bench-startup: listens on 0.0.0.0:$PORT and
 * responds to every request with 200 and a two-byte body, one request per
 * connection. It does no other work, so its start-up time is the floor that
 * the process launch (natively) or the container runtime (in a scratch image)
 * costs before any server code runs.
 *
 * Build (static, for a scratch image): musl-gcc -static -O2 -s -o port-opener
 * port-opener.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 2\r\n"
    "Connection: close\r\n"
    "\r\n"
    "ok";

/* As PID 1 in a container SIGTERM has no default action, so exit on it. */
static void exit_on_signal(int signal_number)
{
    (void)signal_number;
    _exit(0);
}

static void install_signal_handlers(void)
{
    struct sigaction action;

    memset(&action, 0, sizeof action);
    action.sa_handler = exit_on_signal;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static int parse_port(const char *text)
{
    char *end;
    long port;

    if (text == NULL || *text == '\0')
        return 8080;
    port = strtol(text, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535) {
        fprintf(stderr, "invalid PORT '%s': expected 0 to 65535\n", text);
        exit(2);
    }
    return (int)port;
}

static int open_listener(int port)
{
    struct sockaddr_in address;
    int enable = 1;
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (listener < 0) {
        perror("socket");
        exit(1);
    }
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &enable, sizeof enable);
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)port);
    address.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 ||
        listen(listener, 128) != 0) {
        fprintf(stderr, "listen on port %d failed: %s\n", port,
                strerror(errno));
        exit(1);
    }
    return listener;
}

/* Reads until the end of the request head (or EOF), then sends the 200. */
static void serve(int connection)
{
    char buffer[8192];
    size_t used = 0;

    while (used < sizeof buffer - 1) {
        ssize_t count = read(connection, buffer + used,
                             sizeof buffer - 1 - used);
        if (count <= 0)
            return;
        used += (size_t)count;
        buffer[used] = '\0';
        if (strstr(buffer, "\r\n\r\n") != NULL)
            break;
    }
    if (write(connection, RESPONSE, sizeof RESPONSE - 1) < 0)
        return;
}

int main(void)
{
    int listener;

    install_signal_handlers();
    listener = open_listener(parse_port(getenv("PORT")));
    for (;;) {
        int connection = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (connection < 0)
            continue;
        serve(connection);
        close(connection);
    }
}
