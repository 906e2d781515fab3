// Independent OpenIGTLink peer for OrthoNav interop tests, built on the C++ reference
// library (Debian libopenigtlink-dev):  g++ igtl_peer.cxx -I/usr/include/openigtlink -lOpenIGTLink
//
//   igtl_peer push  PORT N   connect to 127.0.0.1:PORT, send the test sequence, stay until closed
//   igtl_peer serve PORT N   listen on 127.0.0.1:PORT, send the test sequence to the first client
//   igtl_peer recv  PORT N   connect to 127.0.0.1:PORT, receive N messages, print them
//   igtl_peer list  PORT N   connect to 127.0.0.1:PORT, receive up to N messages (or until the
//                            server closes), one line each, flushed:
//                            MSG TYPE DEVICE HEADER_VERSION BODY_BYTES CRCOK|CRCFAIL DETAIL...
//                            DETAIL: TRANSFORM 12 matrix numbers; POLYDATA points polygons;
//                            STATUS code error-name; STRING the text; then "END k" (k messages)
//
// Test sequence: N TRANSFORMs "Tool<i%2>ToTracker" with pose(i) (below) and timestamp
// 1000 + i/8 s, then a STATUS NOT_READY on Tool0ToTracker (no timestamp), then a TDATA with
// Tool1 = pose(N) at 1000 + N/8 s,
// then a STRING "done". The receiver prints one line per message; CRC is checked (Unpack(1)).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "igtlClientSocket.h"
#include "igtlMessageHeader.h"
#include "igtlOSUtil.h"
#include "igtlPolyDataMessage.h"
#include "igtlServerSocket.h"
#include "igtlStatusMessage.h"
#include "igtlStringMessage.h"
#include "igtlTrackingDataMessage.h"
#include "igtlTransformMessage.h"

static void pose(int i, igtl::Matrix4x4& m) {
  const double a = 0.1 * i;
  igtl::IdentityMatrix(m);
  m[0][0] = std::cos(a); m[0][1] = -std::sin(a);
  m[1][0] = std::sin(a); m[1][1] = std::cos(a);
  m[0][3] = 10.0 + i; m[1][3] = -20.0 + 2.0 * i; m[2][3] = 30.5 + 0.25 * i;
}

static int send_sequence(igtl::Socket* sock, int n) {
  igtl::TimeStamp::Pointer ts = igtl::TimeStamp::New();
  for (int i = 0; i < n; ++i) {
    igtl::TransformMessage::Pointer msg = igtl::TransformMessage::New();
    char name[32];
    std::snprintf(name, sizeof(name), "Tool%dToTracker", i % 2);
    msg->SetDeviceName(name);
    igtl::Matrix4x4 m;
    pose(i, m);
    msg->SetMatrix(m);
    ts->SetTime(1000.0 + i / 8.0);
    msg->SetTimeStamp(ts);
    msg->Pack();
    if (!sock->Send(msg->GetPackPointer(), msg->GetPackSize())) return 1;
  }
  igtl::StatusMessage::Pointer st = igtl::StatusMessage::New();
  st->SetDeviceName("Tool0ToTracker");
  st->SetCode(igtl::StatusMessage::STATUS_NOT_READY);
  st->SetSubCode(0);
  st->SetErrorName("NotVisible");
  st->SetStatusString("tool not visible");
  st->Pack();
  if (!sock->Send(st->GetPackPointer(), st->GetPackSize())) return 1;
  igtl::TrackingDataMessage::Pointer td = igtl::TrackingDataMessage::New();
  td->SetDeviceName("Tracker");
  igtl::TrackingDataElement::Pointer el = igtl::TrackingDataElement::New();
  el->SetName("Tool1");
  el->SetType(igtl::TrackingDataElement::TYPE_6D);
  igtl::Matrix4x4 m;
  pose(n, m);
  el->SetMatrix(m);
  td->AddTrackingDataElement(el);
  ts->SetTime(1000.0 + n / 8.0);
  td->SetTimeStamp(ts);
  td->Pack();
  if (!sock->Send(td->GetPackPointer(), td->GetPackSize())) return 1;
  igtl::StringMessage::Pointer s = igtl::StringMessage::New();
  s->SetDeviceName("Peer");
  s->SetString("done");
  s->Pack();
  if (!sock->Send(s->GetPackPointer(), s->GetPackSize())) return 1;
  return 0;
}

static int receive(igtl::Socket* sock, int n) {
  for (int k = 0; k < n; ++k) {
    igtl::MessageHeader::Pointer h = igtl::MessageHeader::New();
    h->InitPack();
    int r = sock->Receive(h->GetPackPointer(), h->GetPackSize());
    if (r != h->GetPackSize()) { std::printf("EOF\n"); return 1; }
    h->Unpack();
    igtl::TimeStamp::Pointer ts = igtl::TimeStamp::New();
    h->GetTimeStamp(ts);
    std::string type = h->GetDeviceType();
    std::printf("%s %s %.6f", type.c_str(), h->GetDeviceName(), ts->GetTimeStamp());
    igtl::MessageBase::Pointer body;
    if (type == "TRANSFORM") {
      igtl::TransformMessage::Pointer t = igtl::TransformMessage::New();
      t->SetMessageHeader(h); t->AllocatePack();
      sock->Receive(t->GetPackBodyPointer(), t->GetPackBodySize());
      if (!(t->Unpack(1) & igtl::MessageHeader::UNPACK_BODY)) { std::printf(" CRCFAIL\n"); continue; }
      igtl::Matrix4x4 m; t->GetMatrix(m);
      for (int r2 = 0; r2 < 3; ++r2) for (int c = 0; c < 4; ++c) std::printf(" %.6f", m[r2][c]);
    } else if (type == "STRING") {
      igtl::StringMessage::Pointer t = igtl::StringMessage::New();
      t->SetMessageHeader(h); t->AllocatePack();
      sock->Receive(t->GetPackBodyPointer(), t->GetPackBodySize());
      if (!(t->Unpack(1) & igtl::MessageHeader::UNPACK_BODY)) { std::printf(" CRCFAIL\n"); continue; }
      std::printf(" %s", t->GetString());
    } else if (type == "STATUS") {
      igtl::StatusMessage::Pointer t = igtl::StatusMessage::New();
      t->SetMessageHeader(h); t->AllocatePack();
      sock->Receive(t->GetPackBodyPointer(), t->GetPackBodySize());
      if (!(t->Unpack(1) & igtl::MessageHeader::UNPACK_BODY)) { std::printf(" CRCFAIL\n"); continue; }
      std::printf(" %d %s", t->GetCode(), t->GetErrorName());
    } else if (type == "POLYDATA") {
      igtl::PolyDataMessage::Pointer t = igtl::PolyDataMessage::New();
      t->SetMessageHeader(h); t->AllocatePack();
      sock->Receive(t->GetPackBodyPointer(), t->GetPackBodySize());
      if (!(t->Unpack(1) & igtl::MessageHeader::UNPACK_BODY)) { std::printf(" CRCFAIL\n"); continue; }
      igtl::PolyDataPointArray::Pointer pts = t->GetPoints();
      igtl::PolyDataCellArray::Pointer polys = t->GetPolygons();
      int np = pts.IsNotNull() ? pts->GetNumberOfPoints() : 0;
      int nc = polys.IsNotNull() ? (int)polys->GetNumberOfCells() : 0;
      std::printf(" %d %d", np, nc);
      if (np > 0) { igtlFloat32 p[3]; pts->GetPoint(np - 1, p); std::printf(" %.4f %.4f %.4f", p[0], p[1], p[2]); }
      if (nc > 0) { igtlUint32 c[16]; polys->GetCell(nc - 1, c); std::printf(" %u %u %u", c[0], c[1], c[2]); }
    } else {
      sock->Skip(h->GetBodySizeToRead(), 0);
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  return 0;
}

// One received body, unpacked with the CRC checked (Unpack(1)): prints CRCOK/CRCFAIL and details.
template <class M>
static typename M::Pointer body_of(igtl::Socket* sock, igtl::MessageHeader::Pointer h) {
  typename M::Pointer t = M::New();
  t->SetMessageHeader(h);
  t->AllocatePack();
  int want = t->GetPackBodySize();
  if (want > 0 && sock->Receive(t->GetPackBodyPointer(), want) != want) return typename M::Pointer();
  bool ok = (t->Unpack(1) & igtl::MessageHeader::UNPACK_BODY) != 0;
  std::printf(" %s", ok ? "CRCOK" : "CRCFAIL");
  return ok ? t : typename M::Pointer();
}

static int list(igtl::Socket* sock, int n) {
  int k = 0;
  for (; k < n; ++k) {
    igtl::MessageHeader::Pointer h = igtl::MessageHeader::New();
    h->InitPack();
    int r = sock->Receive(h->GetPackPointer(), h->GetPackSize());
    if (r != h->GetPackSize()) break;  // the server closed the connection
    const unsigned char* raw = static_cast<const unsigned char*>(h->GetPackPointer());
    int version = (raw[0] << 8) | raw[1];  // read before Unpack() swaps the header in place
    h->Unpack();
    std::string type = h->GetDeviceType();
    std::printf("MSG %s %s %d %d", type.c_str(), h->GetDeviceName(), version, (int)h->GetBodySizeToRead());
    if (type == "TRANSFORM") {
      igtl::TransformMessage::Pointer t = body_of<igtl::TransformMessage>(sock, h);
      if (t.IsNotNull()) {
        igtl::Matrix4x4 m; t->GetMatrix(m);
        for (int r2 = 0; r2 < 3; ++r2) for (int c = 0; c < 4; ++c) std::printf(" %.6f", m[r2][c]);
      }
    } else if (type == "STRING") {
      igtl::StringMessage::Pointer t = body_of<igtl::StringMessage>(sock, h);
      if (t.IsNotNull()) std::printf(" %s", t->GetString());
    } else if (type == "STATUS") {
      igtl::StatusMessage::Pointer t = body_of<igtl::StatusMessage>(sock, h);
      if (t.IsNotNull()) std::printf(" %d %s", t->GetCode(), t->GetErrorName());
    } else if (type == "POLYDATA") {
      igtl::PolyDataMessage::Pointer t = body_of<igtl::PolyDataMessage>(sock, h);
      if (t.IsNotNull()) {
        igtl::PolyDataPointArray::Pointer pts = t->GetPoints();
        igtl::PolyDataCellArray::Pointer polys = t->GetPolygons();
        std::printf(" %d %d", pts.IsNotNull() ? pts->GetNumberOfPoints() : 0,
                    polys.IsNotNull() ? (int)polys->GetNumberOfCells() : 0);
      }
    } else {
      sock->Skip(h->GetBodySizeToRead(), 0);
      std::printf(" SKIPPED");
    }
    std::printf("\n");
    std::fflush(stdout);
  }
  std::printf("END %d\n", k);
  std::fflush(stdout);
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 4) { std::fprintf(stderr, "usage: %s push|serve|recv|list PORT N\n", argv[0]); return 2; }
  std::string mode = argv[1];
  int port = std::atoi(argv[2]);
  int n = std::atoi(argv[3]);
  if (mode == "serve") {
    igtl::ServerSocket::Pointer server = igtl::ServerSocket::New();
    if (server->CreateServer(port) < 0) { std::fprintf(stderr, "cannot listen\n"); return 1; }
    std::printf("LISTENING\n");
    std::fflush(stdout);
    igtl::Socket::Pointer sock;
    for (int tries = 0; tries < 100 && sock.IsNull(); ++tries) sock = server->WaitForConnection(100);
    if (sock.IsNull()) return 1;
    int rc = send_sequence(sock, n);
    // keep the connection until the client closes it
    char buf[64];
    while (sock->Receive(buf, 1) > 0) {}
    sock->CloseSocket();
    return rc;
  }
  igtl::ClientSocket::Pointer sock = igtl::ClientSocket::New();
  if (sock->ConnectToServer("127.0.0.1", port) != 0) { std::fprintf(stderr, "cannot connect\n"); return 1; }
  int rc = mode == "push" ? send_sequence(sock, n) : mode == "list" ? list(sock, n) : receive(sock, n);
  if (mode == "push") {  // stay connected until the server closes the connection
    char buf[64];
    while (sock->Receive(buf, 1) > 0) {}
  }
  sock->CloseSocket();
  return rc;
}
