#!/usr/bin/env python3
"""Desk check of templates/prefill_bwd.cu without a GPU: a lane-level model of its four kernels.

Each warp's 32 lanes, `ldmatrix` (plain and .trans) and the m16n8k16 `mma.sync` fragments are
modelled as the PTX ISA defines them, and the kernels' loops, masks, `full` fast paths, pipeline
stages, summary segments and output staging are followed line for line, in float64 (no bf16/f16
rounding), against a float64 reference of the five gradients. Agreement to ~1e-15 means the
template's index arithmetic, operand roles and fragment mappings are right; it says nothing about
races, rounding or speed (the GPU suite, `backward_grid` and the sanitizer subset, does).

A hand-kept model: it follows the template as of the commit that added it, and must be updated
with it. Run: python3 scripts/desk-check-prefill-bwd.py (needs numpy; ~10 s).
"""
import numpy as np, itertools, sys
PAD=8

class Smem:
    def __init__(s, nelem): s.m=np.full(nelem, np.nan)
def ldsm_x4(sm, addr):   # addr: [32] byte addresses; returns [4][32][2]
    r=np.zeros((4,32,2))
    for m in range(4):
        for l in range(32):
            a=addr[8*m + l//4]//2 + 2*(l%4)
            r[m,l,0]=sm.m[a]; r[m,l,1]=sm.m[a+1]
    return r
def ldsm_x4_t(sm, addr):
    r=np.zeros((4,32,2))
    for m in range(4):
        for l in range(32):
            r[m,l,0]=sm.m[addr[8*m+2*(l%4)]//2 + l//4]
            r[m,l,1]=sm.m[addr[8*m+2*(l%4)+1]//2 + l//4]
    return r
def mma(d, a, b0, b1):  # d [32][4], a [4][32][2], b0,b1 [32][2]
    A=np.zeros((16,16)); B=np.zeros((16,8)); Cm=np.zeros((16,8))
    for l in range(32):
        g,t=l//4,l%4
        A[g,2*t:2*t+2]=a[0,l]; A[g+8,2*t:2*t+2]=a[1,l]; A[g,2*t+8:2*t+10]=a[2,l]; A[g+8,2*t+8:2*t+10]=a[3,l]
        B[2*t:2*t+2,g]=b0[l]; B[2*t+8:2*t+10,g]=b1[l]
        Cm[g,2*t:2*t+2]=d[l,0:2]; Cm[g+8,2*t:2*t+2]=d[l,2:4]
    Cm=Cm+A@B
    for l in range(32):
        g,t=l//4,l%4
        d[l,0:2]=Cm[g,2*t:2*t+2]; d[l,2:4]=Cm[g+8,2*t:2*t+2]

def run(B,N,H,HKV,D,W,C,SL,BQ,NW,ST,splits,NCR=None,seed=0):
    rng=np.random.default_rng(seed)
    DP=D+PAD; BN=16*NW; KT=D//16; DT=D//8; CH=D//8
    nc=N//C; ncr=nc if NCR is None else NCR
    G=H//HKV; scale=1/np.sqrt(D); sl2=scale*np.log2(np.e)
    q=rng.standard_normal((B,N,H,D)); k=rng.standard_normal((B,N,HKV,D)); v=rng.standard_normal((B,N,HKV,D))
    ks=rng.standard_normal((B,ncr,HKV,D)); vs=rng.standard_normal((B,ncr,HKV,D)); do=rng.standard_normal((B,N,H,D))
    def ws(i): return max(i-W+1,0) if SL else (i//W)*W
    # reference
    o=np.zeros_like(q); lse=np.zeros((B,H,N))
    dq=np.zeros_like(q); dk=np.zeros_like(k); dv=np.zeros_like(v); dks=np.zeros_like(ks); dvs=np.zeros_like(vs)
    for b in range(B):
        for h in range(H):
            hk=h//G
            for i in range(N):
                js=[j for j in range(N) if j<=i and j>=ws(i)]; cs=list(range(min(i//C,nc)))
                K=np.concatenate([k[b,js,hk],ks[b,cs,hk]]); V=np.concatenate([v[b,js,hk],vs[b,cs,hk]])
                s=scale*K@q[b,i,h]; m=s.max(); p=np.exp(s-m); L=m+np.log(p.sum()); P=np.exp(s-L)
                o[b,i,h]=P@V; lse[b,h,i]=L
    for b in range(B):
        for h in range(H):
            hk=h//G
            for i in range(N):
                js=[j for j in range(N) if j<=i and j>=ws(i)]; cs=list(range(min(i//C,nc)))
                K=np.concatenate([k[b,js,hk],ks[b,cs,hk]]); V=np.concatenate([v[b,js,hk],vs[b,cs,hk]])
                P=np.exp(scale*K@q[b,i,h]-lse[b,h,i]); Dl=do[b,i,h]@o[b,i,h]
                dS=P*(V@do[b,i,h]-Dl)
                dq[b,i,h]=scale*dS@K
                nj=len(js)
                dk[b,js,hk]+=scale*np.outer(dS[:nj],q[b,i,h]); dv[b,js,hk]+=np.outer(P[:nj],do[b,i,h])
                dks[b,cs,hk]+=scale*np.outer(dS[nj:],q[b,i,h]); dvs[b,cs,hk]+=np.outer(P[nj:],do[b,i,h])
    # ---- emulate kernels
    THREADS=NW*32; LOG2E=np.log2(np.e)
    delta=np.full((B,H,N),np.nan)
    for b in range(B):
        for h in range(H):
            for i in range(N): delta[b,h,i]=o[b,i,h]@do[b,i,h]
    lane=np.arange(32)
    def off_a(): return (((((lane>>3)&1)*8+(lane&7))*DP+(lane>>4)*8)*2)
    def off_b(): return ((((lane>>4)*8+(lane&7))*DP+((lane>>3)&1)*8)*2)
    def load_rows(sm, dst, rows_src, nrows, valid):  # dst elem offset; rows_src(r)->vector
        for r in range(nrows):
            sm.m[dst+r*DP:dst+r*DP+D]= rows_src(r) if r<valid else 0.0
    def bwd_qk(sm, NB, a_addr, b_addr):
        s=np.zeros((NB,32,4))
        for kk in range(KT):
            a=ldsm_x4(sm, a_addr+kk*32)
            for nn in range(NB//2):
                bb=ldsm_x4(sm, b_addr+nn*16*DP*2+kk*32)
                mma(s[2*nn],a,bb[0],bb[1]); mma(s[2*nn+1],a,bb[2],bb[3])
        return s
    def bwd_pv(sm, acc, pr, NB, x_addr):
        for kk in range(NB//2):
            a=np.zeros((4,32,2))
            a[0]=pr[2*kk][:,0:2]; a[1]=pr[2*kk][:,2:4]; a[2]=pr[2*kk+1][:,0:2]; a[3]=pr[2*kk+1][:,2:4]
            for dn in range(D//16):
                bb=ldsm_x4_t(sm, x_addr+kk*16*DP*2+dn*32)
                mma(acc[2*dn],a,bb[0],bb[1]); mma(acc[2*dn+1],a,bb[2],bb[3])
    def bwd_store(acc, mul, out_rows, valid):  # out_rows(r, vec)
        stage=np.zeros((16,D))
        for r in range(2):
            for l in range(32):
                for dt in range(DT):
                    stage[(l>>2)+r*8, dt*8+(l&3)*2:dt*8+(l&3)*2+2]=acc[dt][l,2*r:2*r+2]*mul
        for r in range(16):
            if r<valid: out_rows(r, stage[r])
    Odk=np.full_like(dk,np.nan); Odv=np.full_like(dv,np.nan); Odks=np.full_like(ks,np.nan); Odvs=np.full_like(vs,np.nan); Odq=np.full_like(q,np.nan)
    nsb=(nc+BN-1)//BN; nrows=nsb*BN
    part=np.full((2,B,HKV,splits,nrows,D),np.nan)
    seglen=-(-(-(-N//splits))//BQ)*BQ
    raw_blocks=(N+BN-1)//BN
    n_sum=B*HKV*nsb*splits
    grid=B*HKV*(nsb*splits+raw_blocks)
    for bx in range(grid):
        summary=bx<n_sum; seg=0
        if summary:
            t=bx; seg=t%splits; t//=splits; j0=(t%nsb)*BN; t//=nsb; hk=t%HKV; b=t//HKV; lim=nc
            i_lo=max((j0+1)*C, seg*seglen); i_hi=min((seg+1)*seglen,N)-1
            kg=ks; vg=vs
        else:
            t=bx-n_sum; j0=(t%raw_blocks)*BN; t//=raw_blocks; hk=t%HKV; b=t//HKV; lim=N; i_lo=j0
            i_hi=min(j0+BN-1+W-1,N-1) if SL else min(((j0+BN-1)//W+1)*W-1,N-1)
            kg=k; vg=v
        sm=Smem(2*BN*DP+2*ST*BQ*DP)
        sK=0; sV=BN*DP; sQ=sV+BN*DP; sO=sQ+ST*BQ*DP
        sL=np.full(ST*BQ,np.nan); sD=np.full(ST*BQ,np.nan)
        load_rows(sm,sK,lambda r:kg[b,j0+r,hk],BN,lim-j0); load_rows(sm,sV,lambda r:vg[b,j0+r,hk],BN,lim-j0)
        start=(i_lo//BQ)*BQ; n_q=(i_hi-start)//BQ+1 if i_hi>=i_lo else 0; n_steps=G*n_q
        def load_step(t,stage):
            h=hk*G+t//n_q; i0=start+(t%n_q)*BQ
            load_rows(sm,sQ+stage*BQ*DP,lambda r:q[b,i0+r,h],BQ,N-i0)
            load_rows(sm,sO+stage*BQ*DP,lambda r:do[b,i0+r,h],BQ,N-i0)
            for r in range(BQ):
                i=i0+r; ok=i<N
                sL[stage*BQ+r]=lse[b,h,i]*LOG2E if ok else np.inf
                sD[stage*BQ+r]=delta[b,h,i] if ok else 0.0
        accs=[]
        for warp in range(NW):
            accs.append((np.zeros((DT,32,4)),np.zeros((DT,32,4))))
        for t in range(n_steps):
            load_step(t,t%ST)
            stage=t%ST; i0=start+(t%n_q)*BQ
            full = (j0+BN<=min(i0//C,nc)) if summary else (j0+BN-1<=i0 and j0>=ws(min(i0+BQ-1,N-1)))
            for warp in range(NW):
                dkw,dvw=accs[warp]; my_j0=j0+warp*16
                k_a=(sK+warp*16*DP)*2+off_a(); v_a=(sV+warp*16*DP)*2+off_a()
                qb=(sQ+stage*BQ*DP)*2; ob=(sO+stage*BQ*DP)*2
                s=bwd_qk(sm,BQ//8,k_a,qb+off_b()); dp=bwd_qk(sm,BQ//8,v_a,ob+off_b())
                for nt in range(BQ//8):
                    for l in range(32):
                        for e in range(4):
                            col=nt*8+(l&3)*2+(e&1); i=i0+col; j=my_j0+(l>>2)+8*(e>>1)
                            vis=True
                            if not full: vis = (j<min(i//C,nc)) if summary else (j<=i and j>=ws(i) and j<N)
                            pv=2.0**(s[nt][l,e]*sl2-sL[stage*BQ+col]) if vis else 0.0
                            s[nt][l,e]=pv; dp[nt][l,e]=pv*(dp[nt][l,e]-sD[stage*BQ+col])
                bwd_pv(sm,dvw,s,BQ//8,ob+off_a()); bwd_pv(sm,dkw,dp,BQ//8,qb+off_a())
        for warp in range(NW):
            dkw,dvw=accs[warp]; my_j0=j0+warp*16
            if not summary:
                valid=N-my_j0
                if valid>0:
                    def outk(r,vec): Odk[b,my_j0+r,hk]=vec
                    def outv(r,vec): Odv[b,my_j0+r,hk]=vec
                    bwd_store(dkw,scale,outk,valid); bwd_store(dvw,1.0,outv,valid)
            else:
                for r in range(2):
                    for l in range(32):
                        for dt in range(DT):
                            row=my_j0+(l>>2)+r*8; c=dt*8+(l&3)*2
                            part[0,b,hk,seg,row,c:c+2]=dkw[dt][l,2*r:2*r+2]*scale
                            part[1,b,hk,seg,row,c:c+2]=dvw[dt][l,2*r:2*r+2]
    # dsum
    for b in range(B):
        for hk in range(HKV):
            for c in range(ncr):
                kk_=np.zeros(D); vv=np.zeros(D)
                if c<nc:
                    for sg in range(splits): kk_=kk_+part[0,b,hk,sg,c]; vv=vv+part[1,b,hk,sg,c]
                Odks[b,c,hk]=kk_; Odvs[b,c,hk]=vv
    # dq
    nblk=(N+BN-1)//BN
    for b in range(B):
        for h in range(H):
            hk=h//G
            for bx in range(nblk):
                qblock=nblk-1-bx; m0=qblock*BN; m_end=min(m0+BN,N)
                sm=Smem(2*BN*DP+2*ST*BQ*DP); sQ=0; sO=BN*DP; sK=2*BN*DP; sV=sK+ST*BQ*DP
                load_rows(sm,sQ,lambda r:q[b,m0+r,h],BN,N-m0); load_rows(sm,sO,lambda r:do[b,m0+r,h],BN,N-m0)
                lo=(ws(m0)//BQ)*BQ; n_local=(m_end-lo+BQ-1)//BQ; ns=min((m_end-1)//C,nc); n_tiles=n_local+(ns+BQ-1)//BQ
                def load_tile(t,stage):
                    if t<n_local:
                        j0=lo+t*BQ
                        load_rows(sm,sK+stage*BQ*DP,lambda r:k[b,j0+r,hk],BQ,N-j0); load_rows(sm,sV+stage*BQ*DP,lambda r:v[b,j0+r,hk],BQ,N-j0)
                    else:
                        c0=(t-n_local)*BQ
                        load_rows(sm,sK+stage*BQ*DP,lambda r:ks[b,c0+r,hk],BQ,ns-c0); load_rows(sm,sV+stage*BQ*DP,lambda r:vs[b,c0+r,hk],BQ,ns-c0)
                W_=[]
                for warp in range(NW):
                    r_lo=m0+warp*16; r_hi=min(r_lo+15,N-1); active=r_lo<N
                    lse2=np.zeros((32,2)); dlt=np.zeros((32,2))
                    for l in range(32):
                        for r in range(2):
                            i=r_lo+(l>>2)+8*r; ok=i<N
                            lse2[l,r]=lse[b,h,i]*LOG2E if ok else np.inf; dlt[l,r]=delta[b,h,i] if ok else 0.0
                    W_.append((r_lo,r_hi,active,lse2,dlt,np.zeros((DT,32,4))))
                for t in range(n_tiles):
                    load_tile(t,t%ST); stage=t%ST; local=t<n_local
                    j0=lo+t*BQ if local else (t-n_local)*BQ
                    for warp in range(NW):
                        r_lo,r_hi,active,lse2,dlt,dqw=W_[warp]
                        if local:
                            any_=j0<=r_hi and j0+BQ-1>=ws(r_lo); full=j0+BQ-1<=r_lo and j0>=ws(r_hi)
                        else:
                            any_=j0<min(r_hi//C,nc); full=j0+BQ<=min(r_lo//C,nc)
                        if active and any_:
                            kb=(sK+stage*BQ*DP)*2; vb=(sV+stage*BQ*DP)*2
                            qa=(sQ+warp*16*DP)*2+off_a(); oa=(sO+warp*16*DP)*2+off_a()
                            s=bwd_qk(sm,BQ//8,qa,kb+off_b()); dp=bwd_qk(sm,BQ//8,oa,vb+off_b())
                            for nt in range(BQ//8):
                                for l in range(32):
                                    for e in range(4):
                                        r=e>>1; i=r_lo+(l>>2)+8*r; j=j0+nt*8+(l&3)*2+(e&1)
                                        vis=True
                                        if not full: vis=(j<=i and j>=ws(i)) if local else j<min(i//C,nc)
                                        pv=2.0**(s[nt][l,e]*sl2-lse2[l,r]) if vis else 0.0
                                        dp[nt][l,e]=pv*(dp[nt][l,e]-dlt[l,r])
                            bwd_pv(sm,dqw,dp,BQ//8,kb+off_a())
                for warp in range(NW):
                    r_lo,r_hi,active,lse2,dlt,dqw=W_[warp]
                    if not active: continue
                    def outq(r,vec): Odq[b,r_lo+r,h]=vec
                    bwd_store(dqw,scale,outq,N-r_lo)
    err=lambda a,r:(np.abs(a-r).max()/max(np.abs(r).max(),1e-30)) if r.size else 0.0
    res=dict(dq=err(Odq,dq),dk=err(Odk,dk),dv=err(Odv,dv),dks=err(Odks,dks),dvs=err(Odvs,dvs))
    bad=any(not(x<1e-9) for x in res.values())
    return res,bad

if __name__=="__main__":
    cases=[
      dict(B=1,N=37,H=2,HKV=1,D=32,W=16,C=4,SL=False,BQ=16,NW=2,ST=2,splits=2),
      dict(B=1,N=37,H=2,HKV=1,D=32,W=16,C=4,SL=True,BQ=32,NW=2,ST=1,splits=3),
      dict(B=2,N=50,H=2,HKV=2,D=32,W=8,C=2,SL=True,BQ=16,NW=1,ST=2,splits=1,NCR=27),
      dict(B=1,N=70,H=4,HKV=2,D=64,W=32,C=8,SL=False,BQ=64,NW=4,ST=2,splits=2,NCR=9),
      dict(B=1,N=5,H=1,HKV=1,D=32,W=8,C=8,SL=False,BQ=16,NW=2,ST=2,splits=1),
      dict(B=1,N=41,H=1,HKV=1,D=32,W=32,C=1,SL=True,BQ=16,NW=1,ST=1,splits=4),
    ]
    for c in cases:
        r,bad=run(**c); print("BAD" if bad else "ok ", c, {k:f"{v:.1e}" for k,v in r.items()}, flush=True)
