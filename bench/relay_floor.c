/* The same relay as relay_floor.py, compiled: a reference path for the
 * forwarder benchmark, not part of vnet.
 *
 * One guest interface (AF_PACKET, PACKET_VNET_HDR) relayed over one TCP
 * connection as [4-byte big-endian length][vframe], one epoll loop, static
 * buffers, no rules, counting or checks. Set beside relay_floor.py it tells
 * what a compiled data path of the same shape would do on the machine, so
 * the part of vnet's cost that is the language can be told from the part
 * that is the design (user-space relaying over TCP).
 *
 * Build: cc -O2 -o relay_floor relay_floor.c
 * Run inside a host namespace: relay_floor IFNAME listen|connect ADDR PORT
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define PACKET_VNET_HDR_OPT 15
#define PACKET_IGNORE_OUTGOING_OPT 23
#define MAX_VFRAME (65536 + 64)

static unsigned char out[4 + MAX_VFRAME];
static unsigned char in[4 << 20];
static size_t have;

static int fail(const char *what) {
    perror(what);
    return 1;
}

/* Send all of buf on a blocking-with-poll basis: a reference, not a product. */
static int send_all(int fd, const unsigned char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                return -1;
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (poll(&p, 1, 5000) <= 0)
                return -1;
            continue;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int packet_socket(const char *ifname) {
    int one = 1;
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, 0); /* nothing comes in before bind */
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR_OPT, &one, sizeof one);
    setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING_OPT, &one, sizeof one);
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
                              .sll_ifindex = (int)if_nametoindex(ifname)};
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0)
        return -1;
    struct packet_mreq mr = {.mr_ifindex = sll.sll_ifindex, .mr_type = PACKET_MR_PROMISC};
    setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr);
    return fd;
}

static int tcp_socket(const char *mode, const char *addr, int port) {
    int one = 1, fd;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        return -1;
    if (strcmp(mode, "listen") == 0) {
        int listener = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(listener, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(listener, 1) < 0)
            return -1;
        fd = accept(listener, NULL, NULL);
        close(listener);
    } else {
        for (int tries = 0;; tries++) {
            fd = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
                break;
            close(fd);
            if (tries > 400)
                return -1;
            usleep(50000);
        }
    }
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s IFNAME listen|connect ADDR PORT\n", argv[0]);
        return 2;
    }
    int pk = packet_socket(argv[1]);
    if (pk < 0)
        return fail("packet socket");
    int tcp = tcp_socket(argv[2], argv[3], atoi(argv[4]));
    if (tcp < 0)
        return fail("tcp socket");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = pk};
    epoll_ctl(ep, EPOLL_CTL_ADD, pk, &ev);
    ev.data.fd = tcp;
    epoll_ctl(ep, EPOLL_CTL_ADD, tcp, &ev);
    for (;;) {
        struct epoll_event events[4];
        int n = epoll_wait(ep, events, 4, -1);
        if (n < 0 && errno != EINTR)
            return fail("epoll_wait");
        for (int i = 0; i < n; i++) {
            if (events[i].data.fd == pk) {
                for (;;) {
                    ssize_t r = recv(pk, out + 4, MAX_VFRAME, MSG_DONTWAIT);
                    if (r < 0)
                        break;
                    uint32_t len = htonl((uint32_t)r);
                    memcpy(out, &len, 4);
                    if (send_all(tcp, out, (size_t)r + 4) < 0)
                        return fail("tcp send");
                }
                continue;
            }
            ssize_t r = recv(tcp, in + have, sizeof in - have, MSG_DONTWAIT);
            if (r == 0)
                return 0;
            if (r < 0)
                continue;
            have += (size_t)r;
            size_t off = 0;
            while (have - off >= 4) {
                uint32_t len;
                memcpy(&len, in + off, 4);
                len = ntohl(len);
                if (have - off < 4 + (size_t)len)
                    break;
                send(pk, in + off + 4, len, MSG_DONTWAIT); /* queue full: dropped */
                off += 4 + len;
            }
            memmove(in, in + off, have - off);
            have -= off;
        }
    }
}
