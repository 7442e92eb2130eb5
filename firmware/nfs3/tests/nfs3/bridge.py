# bridge.py DIR NFS_PORT MOUNT_PORT - runs inside the private network namespace of
# private-ganesha.sh: forwards DIR/nfs.sock and DIR/mnt.sock (unix sockets, reachable from
# the host namespace through the file system) to 127.0.0.1:NFS_PORT / :MOUNT_PORT there.
import os, socket, sys, threading

def pump(a, b):
    try:
        while True:
            d = a.recv(262144)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

def serve(path, port):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    l = socket.socket(socket.AF_UNIX)
    l.bind(path)
    l.listen(64)
    while True:
        c, _ = l.accept()
        try:
            u = socket.create_connection(("127.0.0.1", port))
        except OSError:
            c.close()  # server down: the client sees the connection close
            continue
        threading.Thread(target=pump, args=(c, u), daemon=True).start()
        threading.Thread(target=pump, args=(u, c), daemon=True).start()

d = sys.argv[1]
threading.Thread(target=serve, args=(d + "/nfs.sock", int(sys.argv[2])), daemon=True).start()
serve(d + "/mnt.sock", int(sys.argv[3]))
