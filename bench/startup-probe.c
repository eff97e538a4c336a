/*
 * Start-up probe for scripts/bench-startup. Launches a server command, polls
 * 127.0.0.1:PORT in a tight loop and prints one CSV line of microseconds:
 *
 *   launched_us,accept_us,health_us,count_us,stop_us,exit_code,rss_kib,
 *   attempts
 *
 * All times start just before posix_spawn. launched_us ends when a --detached
 * command (docker run -d) returns. accept_us, health_us and count_us end when
 * the port accepts a connection, at the first 200 on the health path and at
 * the first 200 on the counting path. stop_us runs from SIGTERM to the process
 * having exited (natively) or over the whole stop command (--detached).
 * rss_kib is VmRSS just before SIGTERM. Fields that do not apply are empty.
 * On any failure it prints a reason on stderr, kills what it started and
 * exits 1 without a CSV line.
 *
 * Build: gcc -O2 -o startup-probe startup-probe.c
 * Example: PORT=8123 startup-probe --port 8123 -- target/release/tally
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct options {
    int port;
    const char *health_path;
    const char *count_path;
    long interval_us;
    long settle_ms;
    long timeout_ms;
    const char *log_path;
    int detached;
    char **command;
    char **stop_command;
};

/* The child being measured; the signal handler kills it on Ctrl-C. */
static volatile pid_t server_pid = -1;
static long connect_attempts;

static void usage(FILE *stream)
{
    fprintf(stream,
            "usage: startup-probe [options] -- COMMAND [ARG...] "
            "[--- STOP_COMMAND [ARG...]]\n"
            "       startup-probe --free-port | --overhead\n"
            "  --port N         port on 127.0.0.1 to poll (required)\n"
            "  --health PATH    health path (default /healthz)\n"
            "  --count PATH     counting path (default /; empty skips it)\n"
            "  --interval-us N  pause between attempts in microseconds\n"
            "                   (default 0: sched_yield only)\n"
            "  --settle-ms N    idle time before stopping (default 100)\n"
            "  --timeout-ms N   limit for each phase (default 20000)\n"
            "  --log FILE       server stdout and stderr (default /dev/null)\n"
            "  --detached       COMMAND exits once the server runs (docker "
            "run -d)\n"
            "                   and STOP_COMMAND stops it (docker stop)\n"
            "  --free-port      print a free loopback port and exit\n"
            "  --overhead       print the cost of the clock and of one "
            "refused connect\n");
}

static int64_t now_ns(void)
{
    struct timespec time;

    clock_gettime(CLOCK_MONOTONIC, &time);
    return (int64_t)time.tv_sec * 1000000000 + time.tv_nsec;
}

/*
 * Kills the server, then dies of the same signal: bash stops a script on
 * Ctrl-C only when the foreground child was killed by SIGINT.
 */
static void kill_server_and_exit(int signal_number)
{
    if (server_pid > 0)
        kill(server_pid, SIGKILL);
    signal(signal_number, SIG_DFL);
    raise(signal_number);
    _exit(128 + signal_number);
}

static void install_signal_handlers(void)
{
    struct sigaction action;

    memset(&action, 0, sizeof action);
    action.sa_handler = kill_server_and_exit;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGHUP, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static long parse_number(const char *name, const char *text)
{
    char *end;
    long value = strtol(text, &end, 10);

    if (*text == '\0' || *end != '\0' || value < 0) {
        fprintf(stderr, "startup-probe: invalid %s '%s': expected a "
                        "non-negative integer\n", name, text);
        exit(2);
    }
    return value;
}

static void parse_options(int argc, char **argv, struct options *options)
{
    int index;

    memset(options, 0, sizeof *options);
    options->health_path = "/healthz";
    options->count_path = "/";
    options->settle_ms = 100;
    options->timeout_ms = 20000;
    options->log_path = "/dev/null";
    for (index = 1; index < argc; index++) {
        const char *name = argv[index];
        const char *value = index + 1 < argc ? argv[index + 1] : NULL;

        if (strcmp(name, "--") == 0) {
            options->command = &argv[index + 1];
            break;
        }
        if (strcmp(name, "--detached") == 0) {
            options->detached = 1;
            continue;
        }
        if (value == NULL) {
            usage(stderr);
            exit(2);
        }
        index++;
        if (strcmp(name, "--port") == 0)
            options->port = (int)parse_number(name, value);
        else if (strcmp(name, "--health") == 0)
            options->health_path = value;
        else if (strcmp(name, "--count") == 0)
            options->count_path = value;
        else if (strcmp(name, "--interval-us") == 0)
            options->interval_us = parse_number(name, value);
        else if (strcmp(name, "--settle-ms") == 0)
            options->settle_ms = parse_number(name, value);
        else if (strcmp(name, "--timeout-ms") == 0)
            options->timeout_ms = parse_number(name, value);
        else if (strcmp(name, "--log") == 0)
            options->log_path = value;
        else {
            usage(stderr);
            exit(2);
        }
    }
    if (options->command == NULL || options->command[0] == NULL ||
        options->port <= 0 || options->port > 65535) {
        usage(stderr);
        exit(2);
    }
    for (index = 0; options->command[index] != NULL; index++) {
        if (strcmp(options->command[index], "---") == 0) {
            options->command[index] = NULL;
            options->stop_command = &options->command[index + 1];
            break;
        }
    }
    if (options->detached &&
        (options->stop_command == NULL || options->stop_command[0] == NULL)) {
        fprintf(stderr,
                "startup-probe: --detached needs '--- STOP_COMMAND'\n");
        exit(2);
    }
}

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in address;

    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return address;
}

/* Returns a connected socket, or -1 if the connection was not accepted. */
static int try_connect(int port)
{
    struct sockaddr_in address = loopback(port);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    connect_attempts++;
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static long find_content_length(const char *head)
{
    const char *line = strstr(head, "\r\n");

    while (line != NULL && strncmp(line, "\r\n\r\n", 4) != 0) {
        line += 2;
        if (strncasecmp(line, "content-length:", 15) == 0)
            return strtol(line + 15, NULL, 10);
        line = strstr(line, "\r\n");
    }
    return -1;
}

/*
 * Sends one GET with Connection: close and reads the whole response.
 * Returns the status code, or 0 if the server closed or failed first.
 */
static int exchange(int fd, int port, const char *path)
{
    char request[512];
    char buffer[16384];
    struct timeval timeout = {2, 0};
    size_t used = 0;
    long content_length = -1;
    char *head_end = NULL;
    int length, status = 0;

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    length = snprintf(request, sizeof request,
                      "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                      "Connection: close\r\n\r\n", path, port);
    if (write(fd, request, (size_t)length) != length)
        return 0;
    for (;;) {
        ssize_t count = read(fd, buffer + used, sizeof buffer - 1 - used);
        if (count <= 0)
            break;
        used += (size_t)count;
        buffer[used] = '\0';
        if (head_end == NULL && (head_end = strstr(buffer, "\r\n\r\n"))) {
            content_length = find_content_length(buffer);
            if (sscanf(buffer, "HTTP/1.%*d %d", &status) != 1)
                return 0;
        }
        if (head_end != NULL && content_length >= 0 &&
            used >= (size_t)(head_end + 4 - buffer) + (size_t)content_length)
            return status;
        if (used == sizeof buffer - 1)
            return status;
    }
    /* Without Content-Length the body ends at EOF. */
    return head_end != NULL && content_length < 0 ? status : 0;
}

static void pause_between_attempts(long interval_us)
{
    struct timespec pause = {interval_us / 1000000,
                             (interval_us % 1000000) * 1000};

    if (interval_us == 0)
        sched_yield();
    else
        nanosleep(&pause, NULL);
}

static int exit_code_of(int status)
{
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

/* The launched command; natively its exit before SIGTERM is a failure. */
struct launch {
    pid_t pid;
    int pidfd;
    int reaped;
};

static int launch_failed(struct launch *launch)
{
    int status;

    if (launch->reaped)
        return 0;
    if (waitpid(launch->pid, &status, WNOHANG) != launch->pid)
        return 0;
    launch->reaped = 1;
    server_pid = -1;
    fprintf(stderr, "startup-probe: command exited early with code %d\n",
            exit_code_of(status));
    return 1;
}

/* Returns 0 once the port accepts, -1 on timeout or early exit. */
static int wait_for_accept(const struct options *options,
                           struct launch *launch, int64_t deadline, int *fd)
{
    for (;;) {
        *fd = try_connect(options->port);
        if (*fd >= 0)
            return 0;
        if (launch_failed(launch))
            return -1;
        if (now_ns() > deadline) {
            fprintf(stderr, "startup-probe: port %d not accepting\n",
                    options->port);
            return -1;
        }
        pause_between_attempts(options->interval_us);
    }
}

/* Returns 0 on the first 200 from PATH, -1 on timeout or early exit. */
static int wait_for_200(const struct options *options, struct launch *launch,
                        const char *path, int64_t deadline, int fd)
{
    int last_status = 0;

    for (;;) {
        if (fd < 0)
            fd = try_connect(options->port);
        if (fd >= 0) {
            last_status = exchange(fd, options->port, path);
            close(fd);
            fd = -1;
            if (last_status == 200)
                return 0;
        }
        if (launch_failed(launch))
            return -1;
        if (now_ns() > deadline) {
            fprintf(stderr, "startup-probe: no 200 from %s, last status %d\n",
                    path, last_status);
            return -1;
        }
        pause_between_attempts(options->interval_us);
    }
}

static pid_t spawn(char **command, const char *log_path)
{
    posix_spawn_file_actions_t actions;
    pid_t pid;
    int error;

    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null",
                                     O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path,
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    error = posix_spawnp(&pid, command[0], &actions, NULL, command, environ);
    posix_spawn_file_actions_destroy(&actions);
    if (error != 0) {
        fprintf(stderr, "startup-probe: cannot start '%s': %s\n", command[0],
                strerror(error));
        return -1;
    }
    return pid;
}

/* Waits for PID to exit for at most TIMEOUT_MS; returns its exit code. */
static int wait_for_exit(pid_t pid, int pidfd, long timeout_ms)
{
    struct pollfd entry = {pidfd, POLLIN, 0};
    int status;

    if (poll(&entry, 1, (int)timeout_ms) != 1) {
        fprintf(stderr, "startup-probe: pid %d still running after %ld ms\n",
                (int)pid, timeout_ms);
        kill(pid, SIGKILL);
    }
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    return exit_code_of(status);
}

static long read_rss_kib(pid_t pid)
{
    char path[64], line[256];
    long rss = -1;
    FILE *status;

    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    status = fopen(path, "r");
    if (status == NULL)
        return -1;
    while (fgets(line, sizeof line, status) != NULL)
        if (sscanf(line, "VmRSS: %ld", &rss) == 1)
            break;
    fclose(status);
    return rss;
}

static void print_us(int64_t nanoseconds, char separator)
{
    if (nanoseconds >= 0)
        printf("%.1f", (double)nanoseconds / 1000.0);
    putchar(separator);
}

/* Returns a loopback port just released by bind(), so almost surely free. */
static int released_port(void)
{
    struct sockaddr_in address = loopback(0);
    socklen_t length = sizeof address;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&address, sizeof address) != 0 ||
        getsockname(fd, (struct sockaddr *)&address, &length) != 0) {
        perror("startup-probe: free port");
        exit(1);
    }
    close(fd);
    return ntohs(address.sin_port);
}

/* Prints the clock's resolution and cost and a refused connect's cost. */
static int print_overhead(void)
{
    enum { ROUNDS = 20000 };
    struct timespec resolution;
    int64_t start;
    int index, port = released_port();

    clock_getres(CLOCK_MONOTONIC, &resolution);
    start = now_ns();
    for (index = 0; index < ROUNDS; index++)
        now_ns();
    printf("clock_resolution_ns=%ld clock_read_ns=%.1f ", resolution.tv_nsec,
           (double)(now_ns() - start) / ROUNDS);

    start = now_ns();
    for (index = 0; index < ROUNDS; index++) {
        int fd = try_connect(port);
        if (fd >= 0) {
            fprintf(stderr, "startup-probe: port %d unexpectedly open\n",
                    port);
            close(fd);
            return 1;
        }
        sched_yield();
    }
    printf("refused_attempt_ns=%.1f\n", (double)(now_ns() - start) / ROUNDS);
    return 0;
}

/* Nanoseconds from launch to each event; -1 where it does not apply. */
struct timings {
    int64_t launched;
    int64_t accepted;
    int64_t healthy;
    int64_t counted;
    int64_t stopped;
    int exit_code;
    long rss_kib;
};

/*
 * Waits for docker run -d to return. Connections opened before it returned
 * stalled for about a second on the test machine (through the published
 * port and on the container's own address alike), so polling starts after.
 */
static int wait_for_detached_start(const struct options *options,
                                   struct launch *launch)
{
    int exit_code = wait_for_exit(launch->pid, launch->pidfd,
                                  options->timeout_ms);

    launch->reaped = 1;
    server_pid = -1;
    if (exit_code != 0) {
        fprintf(stderr, "startup-probe: command exited with code %d\n",
                exit_code);
        return -1;
    }
    return 0;
}

/* Polls the port through each phase; returns -1 on timeout or early exit. */
static int wait_for_phases(const struct options *options,
                           struct launch *launch, int64_t start,
                           struct timings *timings)
{
    int64_t limit = (int64_t)options->timeout_ms * 1000000;
    int fd = -1;

    if (options->detached) {
        if (wait_for_detached_start(options, launch) != 0)
            return -1;
        timings->launched = now_ns() - start;
    } else {
        if (wait_for_accept(options, launch, start + limit, &fd) != 0)
            return -1;
        timings->accepted = now_ns() - start;
    }
    if (wait_for_200(options, launch, options->health_path, now_ns() + limit,
                     fd) != 0)
        return -1;
    timings->healthy = now_ns() - start;
    if (options->count_path[0] == '\0')
        return 0;
    if (wait_for_200(options, launch, options->count_path, now_ns() + limit,
                     -1) != 0)
        return -1;
    timings->counted = now_ns() - start;
    return 0;
}

/* Stops the server: SIGTERM natively, else the stop command. */
static int stop_server(const struct options *options, struct launch *launch,
                       struct timings *timings)
{
    int64_t start;
    pid_t pid = launch->pid;
    int pidfd = launch->pidfd;

    if (options->detached) {
        start = now_ns();
        pid = spawn(options->stop_command, options->log_path);
        if (pid < 0)
            return -1;
        pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    } else {
        timings->rss_kib = read_rss_kib(pid);
        start = now_ns();
        kill(pid, SIGTERM);
    }
    timings->exit_code = wait_for_exit(pid, pidfd, options->timeout_ms);
    timings->stopped = now_ns() - start;
    if (options->detached)
        close(pidfd);
    launch->reaped = 1;
    server_pid = -1;
    return 0;
}

static void print_timings(const struct timings *timings)
{
    print_us(timings->launched, ',');
    print_us(timings->accepted, ',');
    print_us(timings->healthy, ',');
    print_us(timings->counted, ',');
    print_us(timings->stopped, ',');
    printf("%d,", timings->exit_code);
    if (timings->rss_kib >= 0)
        printf("%ld", timings->rss_kib);
    printf(",%ld\n", connect_attempts);
}

static int measure(const struct options *options)
{
    struct timings timings = {-1, -1, -1, -1, -1, -1, -1};
    struct launch launch = {0, -1, 0};
    int64_t start = now_ns();

    launch.pid = spawn(options->command, options->log_path);
    if (launch.pid < 0)
        return 1;
    server_pid = launch.pid;
    launch.pidfd = (int)syscall(SYS_pidfd_open, launch.pid, 0);

    if (wait_for_phases(options, &launch, start, &timings) != 0)
        goto fail;
    usleep((useconds_t)options->settle_ms * 1000);
    if (stop_server(options, &launch, &timings) != 0)
        goto fail;
    print_timings(&timings);
    return 0;

fail:
    if (!launch.reaped) {
        kill(launch.pid, SIGKILL);
        waitpid(launch.pid, NULL, 0);
    }
    return 1;
}

int main(int argc, char **argv)
{
    struct options options;

    if (argc == 2 && strcmp(argv[1], "--free-port") == 0) {
        printf("%d\n", released_port());
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--overhead") == 0)
        return print_overhead();
    if (argc == 2 && (strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "--help") == 0)) {
        usage(stdout);
        return 0;
    }
    parse_options(argc, argv, &options);
    install_signal_handlers();
    return measure(&options);
}
