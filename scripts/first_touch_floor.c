// The memory cost of a batch's first touch of a customer, measured alone: a random 128-byte
// record read-modify-write and its 128-byte journal entry written with streaming stores,
// prefetched 16 ahead, over 1M records in (transparent) huge pages, on 1 or 2 threads. The
// README's Speed section compares the batch path's customer-local phase with it.
//
//   gcc -O2 -pthread -o /tmp/first_touch scripts/first_touch_floor.c && /tmp/first_touch 2
#define _GNU_SOURCE
#include <emmintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef struct { long v[16]; } __attribute__((aligned(128))) rec;
static size_t N = 1<<20; static rec *R, *J; static unsigned *idx;
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static void* work(void* a){ long t=(long)a; size_t half=N/2; unsigned *ix=idx+t*half;
  for(size_t i=0;i<half;i++){ if(i+16<half){ rec*f=&R[ix[i+16]]; __builtin_prefetch(f,1); __builtin_prefetch((char*)f+64,1);} 
    rec*p=&R[ix[i]]; rec*j=&J[ix[i]]; __m128i*s=(__m128i*)p,*d=(__m128i*)j; for(int k=0;k<8;k++) _mm_stream_si128(d+k,_mm_load_si128(s+k));
    p->v[0]+=1; p->v[9]+=i; }
  _mm_sfence(); return 0; }
int main(int c,char**v){ int th=atoi(v[1]); size_t b=N*sizeof(rec);
  R=mmap(0,b,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); J=mmap(0,b,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
  madvise(R,b,MADV_HUGEPAGE); madvise(J,b,MADV_HUGEPAGE); memset(R,0,b); memset(J,0,b);
  idx=malloc(N*4); unsigned x=1; for(size_t i=0;i<N;i++){x=x*1664525+1013904223; idx[i]=(i<N/2? x%(N/2) : N/2 + x%(N/2));}
  double best=1e9; for(int it=0;it<6;it++){ pthread_t p[2]; double t=now();
    if(th==2){ pthread_create(&p[0],0,work,(void*)0); pthread_create(&p[1],0,work,(void*)1); pthread_join(p[0],0); pthread_join(p[1],0);} else { work((void*)0); work((void*)1);} 
    t=now()-t; if(t<best)best=t; }
  printf("%d thread(s): %.1f ns per first touch (wall, %zu ops)\n", th, best*1e9/N, N); return 0; }
